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

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/internal/faultproxy"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/redistest"
)

// TestRedisStopped stops Redis in mid-run: a request with a key gets 503
// (a Connect call CodeUnavailable) without running the handler, one without
// a key still runs, and once Redis is back, service returns within 5 s
// (SPEC §6.1).
func TestRedisStopped(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t)
	// Short timeouts, honoured through the context, so that a store call
	// fails fast while Redis is away; not so short that a loaded machine
	// fails calls to a Redis that is up.
	c := redistest.NewClient(t, &redis.Options{
		Addr:         srv.Addr(),
		DialTimeout:  500 * time.Millisecond,
		ReadTimeout:  time.Second,
		WriteTimeout: time.Second,
		MaxRetries:   -1,
	})
	store := newStore(t, c, redistest.Prefix(t, c))
	var runs, rpcRuns atomic.Int64
	in := startHTTP(t, store, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, chargeJSON("down", runs.Add(1)))
	}, idempotency.WithStoreTimeout(time.Second))
	rpc := startConnect(t, store, func(context.Context, *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
		return chargeResponse("down", rpcRuns.Add(1)), nil
	}, idempotency.WithStoreTimeout(time.Second))

	assertExecuted(t, in.post(t, newKey()), "with Redis up")
	require.Equal(t, int64(1), runs.Load())

	srv.Stop()
	down := in.post(t, newKey())
	assert.Equal(t, http.StatusServiceUnavailable, down.status, "%v", down)
	assert.Equal(t, idempotency.StatusStoreUnavailable, down.header.Get(idempotency.StatusHeader))
	assert.Equal(t, "application/problem+json", down.header.Get("Content-Type"))
	assert.Equal(t, int64(1), runs.Load(), "the handler must not run while the store is away")
	_, err := rpc.Charge(t.Context(), chargeRequest(newKey()))
	var ce *connect.Error
	if assert.ErrorAs(t, err, &ce) {
		assert.Equal(t, connect.CodeUnavailable, ce.Code())
		assert.Equal(t, idempotency.StatusStoreUnavailable, ce.Meta().Get(idempotency.StatusHeader))
	}
	assert.Zero(t, rpcRuns.Load(), "the Connect handler must not run while the store is away")

	keyless := in.post(t, "")
	assertExecuted(t, keyless, "a request without a key never touches the store")
	assert.Equal(t, int64(2), runs.Load())

	srv.Start()
	restarted := time.Now()
	const within = 5 * time.Second
	var back answer
	for time.Since(restarted) < within+time.Second {
		back = in.post(t, newKey())
		if back.status != http.StatusServiceUnavailable {
			break
		}
		time.Sleep(20 * time.Millisecond) // the poll's pace, not a synchronisation
	}
	elapsed := time.Since(restarted)
	t.Logf("service back %v after Redis restarted", elapsed.Round(time.Millisecond))
	assertExecuted(t, back, "after Redis restarted")
	assert.Less(t, elapsed, within, "service must be back within 5 s of Redis")
	assert.Equal(t, int64(3), runs.Load())
	_, err = rpc.Charge(t.Context(), chargeRequest(newKey()))
	assert.NoError(t, err, "Connect calls are served again too")
	assert.Equal(t, int64(1), rpcRuns.Load())
}

// TestRenewalKeepsClaim runs a handler for four leases: renewal keeps its
// claim, so duplicates sent to another instance all the while get 409 and
// never run (SPEC §3.4).
func TestRenewalKeepsClaim(t *testing.T) {
	t.Parallel()
	const (
		// Redis's own clock runs the lease, so no clock can be injected:
		// renewal every third of a 6 s lease leaves 4 s for a late timer or
		// a slow round trip on a busy machine under -race. The handler runs
		// half a lease past the first lease's end.
		lease   = 6 * time.Second
		runTime = lease + lease/2
	)
	ca, cb := redistest.Client(t), redistest.Client(t)
	prefix := redistest.Prefix(t, ca)
	started, returned := make(chan struct{}), make(chan struct{})
	var runsA, runsB atomic.Int64
	a := startHTTP(t, newStore(t, ca, prefix), func(w http.ResponseWriter, _ *http.Request) {
		run := runsA.Add(1)
		close(started)
		time.Sleep(runTime) // the handler's work
		close(returned)
		writeJSON(w, chargeJSON("A", run))
	}, idempotency.WithLease(lease))
	b := startHTTP(t, newStore(t, cb, prefix), func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, chargeJSON("B", runsB.Add(1)))
	}, idempotency.WithLease(lease))

	key := newKey()
	first := make(chan answer, 1)
	go func() {
		ans, err := a.send(t.Context(), key, chargeBody)
		assert.NoError(t, err)
		first <- ans
	}()
	receive(t, started, startTimeout, "the first handler's start")
	begun := time.Now()

	var conflicts int
	var last time.Time
loop:
	for {
		dup := b.post(t, key)
		if dup.status != http.StatusConflict {
			// A duplicate may find the record only once the handler is done.
			select {
			case <-returned:
			default:
				assert.Fail(t, "a duplicate got through while the handler ran", "%v", dup)
			}
			assert.True(t, dup.replayed(), "%v", dup)
			break
		}
		assertConflict(t, dup)
		conflicts++
		last = time.Now()
		select {
		case <-returned:
			break loop
		case <-time.After(30 * time.Millisecond):
		}
	}
	firstAnswer := receive(t, first, 20*time.Second, "the first request's answer")
	t.Logf("%d duplicates got 409 over %v, a lease being %v", conflicts, last.Sub(begun).Round(time.Millisecond), lease)
	assert.GreaterOrEqual(t, last.Sub(begun), lease, "the duplicates must outlast the first lease")
	assertExecuted(t, firstAnswer)
	assert.Zero(t, runsB.Load(), "no duplicate may run while the handler lives")
	assertReplayOf(t, firstAnswer, b.post(t, key), "the other instance replays the renewed claim's record")
}

// TestHolderCutOff cuts instance A off from Redis while its handler runs.
// A's lease runs out; instance B then executes the key; when A reaches
// Redis again, its late completion cannot overwrite B's record, while A's
// own client still gets A's response (SPEC §3.3, §3.4).
func TestHolderCutOff(t *testing.T) {
	t.Parallel()
	// Long enough that A's claim is still live when B first looks, on a
	// busy machine under -race.
	const lease = 1500 * time.Millisecond
	cb := redistest.Client(t)
	prefix := redistest.Prefix(t, cb)
	proxy := faultproxy.Start(t, redistest.Addr(t))
	// The proxy closes A's connections at once while it blocks, so A's
	// calls fail fast without short timeouts; long ones keep a loaded
	// machine from failing A's claim before the test begins.
	ca := redistest.NewClient(t, &redis.Options{Addr: proxy.Addr(), ReadTimeout: storeTimeout, WriteTimeout: storeTimeout})

	storeA := observe(newStore(t, ca, prefix))
	started, finish := make(chan struct{}), make(chan struct{})
	var runsA, runsB atomic.Int64
	a := startHTTP(t, storeA, func(w http.ResponseWriter, r *http.Request) {
		run := runsA.Add(1)
		close(started)
		select {
		case <-finish:
		case <-r.Context().Done():
		}
		writeJSON(w, chargeJSON("A", run))
	}, idempotency.WithLease(lease))
	b := startHTTP(t, newStore(t, cb, prefix), func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, chargeJSON("B", runsB.Add(1)))
	}, idempotency.WithLease(lease))

	key := newKey()
	fromA := make(chan answer, 1)
	go func() {
		ans, err := a.send(t.Context(), key, chargeBody)
		assert.NoError(t, err)
		fromA <- ans
	}()
	receive(t, started, startTimeout, "the first handler's start")
	proxy.Block()
	blocked := time.Now()

	// B meets A's claim until its lease runs out, then executes.
	var fromB answer
	conflicts := 0
	for time.Since(blocked) < 10*time.Second {
		fromB = b.post(t, key)
		if fromB.status != http.StatusConflict {
			break
		}
		conflicts++
		time.Sleep(20 * time.Millisecond) // the poll's pace, not a synchronisation
	}
	t.Logf("B executed %v after A was cut off, after %d conflicts", time.Since(blocked).Round(time.Millisecond), conflicts)
	assertExecuted(t, fromB, "B takes the key over once A's lease ran out")
	assert.Positive(t, conflicts, "A's claim was live when it was cut off")
	assert.Equal(t, int64(1), runsB.Load())

	proxy.Unblock()
	close(finish)
	// Generous: A reconnects through the proxy, on a busy machine.
	ownAnswer := receive(t, fromA, 20*time.Second, "A's answer")
	assertExecuted(t, ownAnswer, "A's client still gets A's response")
	assert.Contains(t, string(ownAnswer.body), `"ch_A_1"`)
	assert.ErrorIs(t, receive(t, storeA.completed, 20*time.Second, "A's late completion"), idempotency.ErrNotHeld,
		"A's completion must reach Redis and be refused")

	for name, in := range map[string]*httpInstance{"A": a, "B": b} {
		assertReplayOf(t, fromB, in.post(t, key), "instance %s replays B's record", name)
	}
	assert.Equal(t, int64(1), runsA.Load())
	assert.Equal(t, int64(1), runsB.Load())
	st := proxy.Stats()
	t.Logf("proxy: %+v", st)
	assert.Positive(t, st.Cut, "the block cut A's connections")
}

// TestClientDisconnects shows what becomes of a claim when the client goes
// away in mid-request (SPEC §4.5): work the handler finishes anyway is
// stored and replayed to the retry; a handler that gives up with its
// request's context releases the claim, and the retry runs anew.
func TestClientDisconnects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// giveUp makes the first run return without an answer once its
		// request's context ends; otherwise it answers all the same.
		giveUp       bool
		wantStored   bool
		wantRuns     int64
		wantReplayed bool
		wantBody     string
	}{
		{name: "finished work is stored", wantStored: true, wantRuns: 1, wantReplayed: true, wantBody: chargeJSON("dc", 1)},
		{name: "a handler that gives up releases the claim", giveUp: true, wantRuns: 2, wantBody: chargeJSON("dc", 2)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := redistest.Client(t)
			store := observe(newStore(t, c, redistest.Prefix(t, c)))
			started := make(chan struct{})
			var runs atomic.Int64
			in := startHTTP(t, store, func(w http.ResponseWriter, r *http.Request) {
				run := runs.Add(1)
				if run == 1 {
					close(started)
					<-r.Context().Done()
					if tt.giveUp {
						return
					}
				}
				writeJSON(w, chargeJSON("dc", run))
			})

			key := newKey()
			ctx, cancel := context.WithCancel(t.Context())
			gone := make(chan error, 1)
			go func() {
				_, err := in.send(ctx, key, chargeBody)
				gone <- err
			}()
			receive(t, started, startTimeout, "the first handler's start")
			cancel()
			assert.Error(t, receive(t, gone, 5*time.Second, "the cancelled request's end"))

			if tt.wantStored {
				assert.NoError(t, receive(t, store.completed, 5*time.Second, "the completion"), "the answer is stored")
			} else {
				assert.NoError(t, receive(t, store.released, 5*time.Second, "the release"), "the claim is released")
			}
			retry := in.post(t, key)
			assert.Equal(t, tt.wantReplayed, retry.replayed(), "%v", retry)
			assert.Equal(t, http.StatusOK, retry.status)
			assert.Equal(t, tt.wantBody, string(retry.body))
			assert.Equal(t, tt.wantRuns, runs.Load())
		})
	}
}
