package memory_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/idemkey/idempotency/httpmw"
	"github.com/idemkey/idempotency/store/memory"
)

// A memory store keeps claims and records in the process, for a single
// instance and for tests; WithMaxRecords bounds it.
func ExampleNew() {
	store := memory.New(memory.WithMaxRecords(10_000))
	defer store.Close()

	refunds := 0
	refund := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		refunds++
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"refund":%d}`, refunds)
	})
	handler := httpmw.New(store)(refund)

	for range 2 {
		req := httptest.NewRequest(http.MethodPost, "/refunds", strings.NewReader(`{"charge":"ch_1"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", "refund-ch_1")
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		fmt.Printf("%d %s replayed=%q\n", rec.Code, rec.Body, rec.Header().Get("Idempotent-Replayed"))
	}
	// Output:
	// 200 {"refund":1} replayed=""
	// 200 {"refund":1} replayed="true"
}
