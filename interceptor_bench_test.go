package idempotency_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/idemkey/idempotency"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1/paymentsv1connect"
	"github.com/idemkey/idempotency/store/memory"
)

// benchCharges answers every charge with the same small message.
type benchCharges struct {
	paymentsv1connect.UnimplementedPaymentServiceHandler
}

func (benchCharges) Charge(context.Context, *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
	return connect.NewResponse(&paymentsv1.ChargeResponse{ChargeId: "ch_1", Status: "succeeded", AmountCents: 1250}), nil
}

const benchBody = `{"accountId":"acct_1","amountCents":"1250","currency":"EUR"}`

// newBenchHandler returns the Connect handler of the payments service, with
// the interceptor over a fresh memory store unless store is false.
func newBenchHandler(store bool) http.Handler {
	var opts []connect.HandlerOption
	if store {
		opts = append(opts, connect.WithInterceptors(idempotency.NewInterceptor(memory.New(memory.WithMaxRecords(1<<20)), quiet)))
	}
	_, h := paymentsv1connect.NewPaymentServiceHandler(benchCharges{}, opts...)
	return h
}

// serveCharge makes one Connect JSON unary call in process and fails b
// unless it succeeded.
func serveCharge(b *testing.B, h http.Handler, key string) *httptest.ResponseRecorder {
	b.Helper()
	req := httptest.NewRequestWithContext(b.Context(), http.MethodPost, paymentsv1connect.PaymentServiceChargeProcedure, strings.NewReader(benchBody))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(idempotency.DefaultIdempotencyHeader, key)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		b.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	return rec
}

// BenchmarkInterceptor measures a Connect JSON unary call in process, with
// the same request headers on every path: the bare handler, a first
// execution (a new key each time), and a replay (one key).
//
// The bare handler runs before and after each guarded path (and once to warm
// up), so that internal/benchratio can compare each path with its
// neighbours in time.
func BenchmarkInterceptor(b *testing.B) {
	bare := func(b *testing.B) {
		h := newBenchHandler(false)
		b.ReportAllocs()
		for b.Loop() {
			serveCharge(b, h, "bench-key-0000000001")
		}
	}
	b.Run("Warmup", bare)
	b.Run("Bare", bare)
	b.Run("First", func(b *testing.B) {
		h := newBenchHandler(true)
		key := []byte("bench-key-")
		n := 0
		b.ReportAllocs()
		for b.Loop() {
			n++
			// A fresh store now and then keeps the store's size, and so its
			// cost, steady however long the benchmark runs.
			if n%(1<<19) == 0 {
				b.StopTimer()
				h = newBenchHandler(true)
				b.StartTimer()
			}
			serveCharge(b, h, string(strconv.AppendInt(key, int64(n), 10)))
		}
	})
	b.Run("Bare", bare)
	b.Run("Replay", func(b *testing.B) {
		h := newBenchHandler(true)
		serveCharge(b, h, "bench-key-0000000001")
		b.ReportAllocs()
		for b.Loop() {
			rec := serveCharge(b, h, "bench-key-0000000001")
			if rec.Header().Get(idempotency.DefaultReplayHeader) != "true" {
				b.Fatal("not a replay")
			}
		}
	})
	b.Run("Bare", bare)
}
