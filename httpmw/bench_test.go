package httpmw_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/httpmw"
	"github.com/idemkey/idempotency/store/memory"
)

// The workload: net/http in process with a recorder, a 13-byte JSON
// request and a handler answering 201 with a 9-byte JSON body. Every
// sub-benchmark sends the same request headers; the bare handler is the
// baseline the others are measured against.
var (
	benchRequestBody  = []byte(`{"amount":10}`)
	benchResponseBody = []byte(`{"id":42}`)
)

func benchHandler(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_, _ = w.Write(benchResponseBody)
}

func benchServe(b *testing.B, h http.Handler, key string) {
	r := httptest.NewRequest(http.MethodPost, "/payments", bytes.NewReader(benchRequestBody))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Idempotency-Key", key)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	if rec.Code != http.StatusCreated {
		b.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
}

// BenchmarkMiddleware interleaves the bare handler with each guarded
// path: Warmup, Bare, NoKey, Bare, First, Bare, Replay, Bare. The ratio of
// a path to the bare runs on either side of it (see internal/benchratio)
// is steadier on a noisy machine than either time alone.
func BenchmarkMiddleware(b *testing.B) {
	bare := func(b *testing.B) {
		h := http.HandlerFunc(benchHandler)
		b.ReportAllocs()
		for b.Loop() {
			benchServe(b, h, "bench-key")
		}
	}
	b.Run("Warmup", bare)
	b.Run("Bare", bare)
	b.Run("NoKey", func(b *testing.B) {
		// The middleware looks for another header, so that the request
		// carries the same headers as in the other benchmarks and still
		// has no key.
		h := httpmw.New(memory.New(), idempotency.WithIdempotencyHeader("X-Other-Key"))(http.HandlerFunc(benchHandler))
		b.ReportAllocs()
		for b.Loop() {
			benchServe(b, h, "bench-key")
		}
	})
	b.Run("Bare", bare)
	b.Run("First", func(b *testing.B) {
		keys := make([]string, b.N)
		for i := range keys {
			keys[i] = "bench-key-" + strconv.Itoa(i)
		}
		// Every first execution adds a record. A new store every
		// storeRecords iterations keeps the heap, and so the collector's
		// work, at a steady size whatever b.N is, as in a server whose
		// records expire.
		const storeRecords = 1 << 15
		newHandler := func() http.Handler {
			return httpmw.New(memory.New(memory.WithMaxRecords(storeRecords)))(http.HandlerFunc(benchHandler))
		}
		h := newHandler()
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			if i > 0 && i%storeRecords == 0 {
				b.StopTimer()
				h = newHandler()
				b.StartTimer()
			}
			benchServe(b, h, keys[i])
		}
	})
	b.Run("Bare", bare)
	b.Run("Replay", func(b *testing.B) {
		h := httpmw.New(memory.New())(http.HandlerFunc(benchHandler))
		benchServe(b, h, "bench-key")
		b.ReportAllocs()
		for b.Loop() {
			benchServe(b, h, "bench-key")
		}
	})
	b.Run("Bare", bare)
}
