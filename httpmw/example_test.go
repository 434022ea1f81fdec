package httpmw_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/idemkey/idempotency/httpmw"
	"github.com/idemkey/idempotency/store/memory"
)

// A payment endpoint behind the middleware: the first request with a key
// runs the handler; a retry with the same key gets the stored response,
// marked as a replay, and the handler does not run again.
func Example() {
	payments := 0
	createPayment := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		payments++
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"id":"pay_%d"}`, payments)
	})
	handler := httpmw.New(memory.New())(createPayment)

	for _, attempt := range []string{"first call", "retry"} {
		req := httptest.NewRequest(http.MethodPost, "/payments", strings.NewReader(`{"amount":100}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", "8e0f6e3a-5d2c-4b7e-9a51-2f6d3c1b7a90")
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)

		body, _ := io.ReadAll(rec.Body)
		fmt.Printf("%s: %d %s replayed=%q\n", attempt, rec.Code, body, rec.Header().Get("Idempotent-Replayed"))
	}
	fmt.Println("payments made:", payments)
	// Output:
	// first call: 201 {"id":"pay_1"} replayed=""
	// retry: 201 {"id":"pay_1"} replayed="true"
	// payments made: 1
}
