package idempotency_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/httpmw"
	"github.com/idemkey/idempotency/store/memory"
)

// An observer sees one decision per guarded request, with the route as
// metrics name it: the pattern that matched, never the path.
func ExampleWithObserver() {
	store := memory.New()
	defer store.Close()
	observe := func(_ context.Context, d idempotency.Decision) {
		fmt.Printf("%s %s (key hash of %d characters)\n", d.Outcome, d.Route, len(d.KeyHash))
	}
	mux := http.NewServeMux()
	mux.Handle("POST /orders/{id}", httpmw.New(store,
		idempotency.WithObserver(observe),
		idempotency.WithLogger(slog.New(slog.DiscardHandler)),
	)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprint(w, `{"id":"`+r.PathValue("id")+`"}`)
	})))

	for range 2 {
		r := httptest.NewRequest(http.MethodPost, "/orders/o_42", strings.NewReader(`{"qty":1}`))
		r.Header.Set("Idempotency-Key", "order-o_42-try")
		mux.ServeHTTP(httptest.NewRecorder(), r)
	}
	// Output:
	// executed POST /orders/{id} (key hash of 12 characters)
	// replayed POST /orders/{id} (key hash of 12 characters)
}
