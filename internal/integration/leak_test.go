package integration

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/internal/faultproxy"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/redistest"
)

// TestNoGoroutineLeft runs every part that starts goroutines (lease
// renewal, a store's wake-up subscription, a waiting duplicate, the fault
// proxy with latency and a cut, HTTP/1.1 and HTTP/2 servers and clients)
// and checks that none is left once the test's clean-up has closed them.
func TestNoGoroutineLeft(t *testing.T) {
	// Not parallel: goleak sees every goroutine of the process. The other
	// tests of the package are parallel, so they wait until this one ends.
	redistest.Addr(t) // the shared server outlives the test
	ignore := goleak.IgnoreCurrent()
	// Registered first, so that it runs after every other clean-up.
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })

	proxy := faultproxy.Start(t, redistest.Addr(t))
	ca := redistest.NewClient(t, &redis.Options{Addr: proxy.Addr()})
	cb := redistest.Client(t)
	prefix := redistest.Prefix(t, cb)
	lease := idempotency.WithLease(time.Second)

	g := newGate()
	var runs atomic.Int64
	a := startHTTP(t, newStore(t, ca, prefix), func(w http.ResponseWriter, r *http.Request) {
		run := runs.Add(1)
		if run == 1 {
			g.pass(r.Context())
		}
		writeJSON(w, chargeJSON("A", run))
	}, lease)
	b := startHTTP(t, newStore(t, cb, prefix), func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, chargeJSON("B", runs.Add(1)))
	}, lease, idempotency.WithWait(10*time.Second))
	rpc := startConnect(t, newStore(t, cb, prefix), func(_ context.Context, _ *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
		return chargeResponse("C", runs.Add(1)), nil
	}, lease)

	key := newKey()
	fromA := make(chan answer, 1)
	go func() {
		ans, err := a.send(t.Context(), key, chargeBody)
		assert.NoError(t, err)
		fromA <- ans
	}()
	receive(t, g.entered, startTimeout, "the held handler's start")
	proxy.SetLatency(5 * time.Millisecond)
	fromB := make(chan answer, 1)
	go func() {
		ans, err := b.send(t.Context(), key, chargeBody)
		assert.NoError(t, err)
		fromB <- ans
	}()
	time.Sleep(800 * time.Millisecond) // renewals, at a third of the lease, through the slow proxy while B waits
	close(g.open)
	first := receive(t, fromA, 5*time.Second, "A's answer")
	assertExecuted(t, first)
	assertReplayOf(t, first, receive(t, fromB, 5*time.Second, "B's answer"), "B waited for A")

	proxy.Cut()
	assertExecuted(t, a.post(t, newKey()), "A reconnects after the cut")
	_, err := rpc.Charge(t.Context(), chargeRequest(newKey()))
	require.NoError(t, err)
	assert.Equal(t, int64(3), runs.Load())
}
