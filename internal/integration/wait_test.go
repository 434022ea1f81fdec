package integration

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/internal/redistest"
	"github.com/idemkey/idempotency/store/memory"
)

// TestWaitAcrossInstances checks issue 5's promise across processes that
// share Redis: a duplicate sent to instance B while instance A runs the
// request waits for A and gets A's answer as a replay, woken by a message,
// not by polling; a wait that runs out answers 409 within its bound; and a
// claim that A releases wakes B, which then runs the request itself.
func TestWaitAcrossInstances(t *testing.T) {
	t.Parallel()

	t.Run("answered with the first's result", func(t *testing.T) {
		t.Parallel()
		const runTime = 500 * time.Millisecond
		// A server of the test's own, so that INFO commandstats counts
		// this test's commands only.
		srv := redistest.StartServer(t)
		ca, cb := srv.Client(t), srv.Client(t)
		stats := srv.Client(t)
		prefix := redistest.Prefix(t, ca)
		counter := redistest.NewCounter(cb)
		started := make(chan struct{}, 1)
		var runsA, runsB atomic.Int64
		a := startHTTP(t, newStore(t, ca, prefix), func(w http.ResponseWriter, _ *http.Request) {
			run := runsA.Add(1)
			started <- struct{}{}
			time.Sleep(runTime) // the handler's work
			writeJSON(w, chargeJSON("A", run))
		})
		b := startHTTP(t, newStore(t, cb, prefix), func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, chargeJSON("B", runsB.Add(1)))
		}, idempotency.WithWait(10*time.Second))

		// The first round loads the scripts and starts B's subscription;
		// the second is counted.
		for round := range 2 {
			key := newKey()
			fromA := make(chan answer, 1)
			go func() {
				ans, err := a.send(t.Context(), key, chargeBody)
				assert.NoError(t, err)
				fromA <- ans
			}()
			receive(t, started, startTimeout, "the first handler's start")
			before := commandStats(t, stats)
			counter.Reset()
			sent := time.Now()
			dup := b.post(t, key)
			elapsed := time.Since(sent)
			first := receive(t, fromA, 5*time.Second, "A's answer")
			names := counter.Names()
			after := commandStats(t, stats)

			assertExecuted(t, first)
			assertReplayOf(t, first, dup, "round %d: B answers with A's result", round)
			// Below the store's 5 s poll: B was woken, on a busy machine too.
			assert.Less(t, elapsed, 3*time.Second, "round %d", round)
			assert.Zero(t, runsB.Load(), "round %d: B never runs the request", round)
			if round == 0 {
				continue
			}
			delta := func(cmd string) int { return after[cmd] - before[cmd] }
			t.Logf("B answered %v after it got the duplicate; B's client sent %d commands while it waited %v; "+
				"Redis saw publish +%d, subscribe +%d, evalsha +%d",
				elapsed.Round(time.Millisecond), len(names), names, delta("publish"), delta("subscribe"), delta("evalsha"))
			assert.LessOrEqual(t, len(names), 4, "B sends a handful of commands however long it waits")
			assert.Equal(t, 1, delta("publish"), "A's completion wakes B with one message")
			assert.Zero(t, delta("subscribe"), "B's store subscribed once, in the first round")
		}
	})

	t.Run("a wait that runs out answers 409", func(t *testing.T) {
		t.Parallel()
		const wait = 400 * time.Millisecond
		ca, cb := redistest.Client(t), redistest.Client(t)
		prefix := redistest.Prefix(t, ca)
		g := newGate()
		var runsB atomic.Int64
		a := startHTTP(t, newStore(t, ca, prefix), func(w http.ResponseWriter, r *http.Request) {
			g.pass(r.Context())
			writeJSON(w, chargeJSON("A", 1))
		})
		b := startHTTP(t, newStore(t, cb, prefix), func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, chargeJSON("B", runsB.Add(1)))
		}, idempotency.WithWait(wait))

		key := newKey()
		fromA := make(chan answer, 1)
		go func() {
			ans, err := a.send(t.Context(), key, chargeBody)
			assert.NoError(t, err)
			fromA <- ans
		}()
		receive(t, g.entered, startTimeout, "the held handler's start")
		sent := time.Now()
		dup := b.post(t, key)
		elapsed := time.Since(sent)
		close(g.open)
		t.Logf("the wait of %v ran out after %v", wait, elapsed.Round(time.Millisecond))
		assertConflict(t, dup)
		assert.GreaterOrEqual(t, elapsed, wait-20*time.Millisecond, "B waits before it gives up")
		assert.Less(t, elapsed, wait+3*time.Second, "B gives up within its bound, plus its claims")
		assertExecuted(t, receive(t, fromA, 5*time.Second, "A's answer"))
		assert.Zero(t, runsB.Load())
	})

	t.Run("a released claim wakes the waiter, which executes", func(t *testing.T) {
		t.Parallel()
		ca, cb := redistest.Client(t), redistest.Client(t)
		prefix := redistest.Prefix(t, ca)
		bReplies := newReplies(cb)
		started := make(chan struct{})
		var returned atomic.Pointer[time.Time]
		var runsA, runsB atomic.Int64
		a := startHTTP(t, newStore(t, ca, prefix), func(w http.ResponseWriter, r *http.Request) {
			runsA.Add(1)
			bReplies.drain()
			close(started)
			// B's claim finds the key in flight, and its mark reaches
			// Redis: B is waiting.
			assert.True(t, bReplies.await(r.Context(), 2), "B never waited")
			now := time.Now()
			returned.Store(&now)
			// Not JSON: not stored, and the claim is released.
			w.Header().Set("Content-Type", "text/plain")
			_, _ = io.WriteString(w, "try again later")
		})
		b := startHTTP(t, newStore(t, cb, prefix), func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, chargeJSON("B", runsB.Add(1)))
		}, idempotency.WithWait(10*time.Second))

		key := newKey()
		fromA := make(chan answer, 1)
		go func() {
			ans, err := a.send(t.Context(), key, chargeBody)
			assert.NoError(t, err)
			fromA <- ans
		}()
		receive(t, started, startTimeout, "the first handler's start")
		dup := b.post(t, key)
		first := receive(t, fromA, 5*time.Second, "A's answer")
		assert.Equal(t, "try again later", string(first.body))
		assertExecuted(t, dup, "B runs the request once A released it")
		assert.Equal(t, chargeJSON("B", 1), string(dup.body))
		woken := dup.at.Sub(*returned.Load())
		t.Logf("B answered %v after A's handler returned", woken.Round(time.Millisecond))
		// Below the store's 5 s poll: the release woke B, on a busy machine too.
		assert.Less(t, woken, 3*time.Second, "the release wakes B")
		assert.Equal(t, int64(1), runsA.Load())
		assert.Equal(t, int64(1), runsB.Load())
		assertReplayOf(t, dup, a.post(t, key), "A replays B's record")
	})
}

// commandStats returns the calls per command from INFO commandstats, which
// counts what scripts run and what pub/sub connections send, unlike a
// client hook.
func commandStats(t *testing.T, c *redis.Client) map[string]int {
	t.Helper()
	info, err := c.Info(t.Context(), "commandstats").Result()
	require.NoError(t, err)
	stats := map[string]int{}
	for line := range strings.Lines(info) {
		name, rest, ok := strings.Cut(strings.TrimPrefix(line, "cmdstat_"), ":calls=")
		if !ok {
			continue
		}
		calls, _, _ := strings.Cut(rest, ",")
		n, err := strconv.Atoi(calls)
		require.NoError(t, err, line)
		stats[name] = n
	}
	return stats
}

// waitLatencyRounds is how many waits each latency figure is taken over.
const waitLatencyRounds = 100

// TestWaitLatency measures how long a waiting duplicate takes to be
// answered once the first request completes: from the moment the first
// handler returns to the moment the duplicate's client has its answer,
// over loopback HTTP. It logs the median and the worst of 100, in one
// process on the memory store and across two instances sharing Redis, and
// asserts only generous bounds.
func TestWaitLatency(t *testing.T) {
	t.Parallel()
	// A probe tells when the duplicate of a round is waiting: reset is
	// called before the duplicate is sent, and waiting returns once it
	// waits.
	type probe struct {
		reset   func()
		waiting func(context.Context) bool
	}
	tests := []struct {
		name string
		// start returns the instance that gets the first request and the
		// one that gets its duplicate.
		start func(t *testing.T, handler http.HandlerFunc) (first, dup *httpInstance, p probe)
	}{
		{name: "one process, memory store", start: func(t *testing.T, handler http.HandlerFunc) (*httpInstance, *httpInstance, probe) {
			store := &signalWaits{Store: memory.New(), entered: make(chan struct{}, 1)}
			in := startHTTP(t, store, handler, idempotency.WithWait(10*time.Second))
			return in, in, probe{
				reset: func() {
					select {
					case <-store.entered:
					default:
					}
				},
				waiting: func(ctx context.Context) bool {
					select {
					case <-store.entered:
						return true
					case <-ctx.Done():
						return false
					}
				},
			}
		}},
		{name: "two instances, Redis", start: func(t *testing.T, handler http.HandlerFunc) (*httpInstance, *httpInstance, probe) {
			ca, cb := redistest.Client(t), redistest.Client(t)
			prefix := redistest.Prefix(t, ca)
			bReplies := newReplies(cb)
			a := startHTTP(t, newStore(t, ca, prefix), handler)
			b := startHTTP(t, newStore(t, cb, prefix), handler, idempotency.WithWait(10*time.Second))
			return a, b, probe{
				reset: bReplies.drain,
				// B's claim found the key in flight and its mark has
				// reached Redis.
				waiting: func(ctx context.Context) bool { return bReplies.await(ctx, 2) },
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var (
				returned atomic.Pointer[time.Time]
				runs     atomic.Int64
				p        probe
				ready    = make(chan struct{})
				started  = make(chan struct{}, waitLatencyRounds)
			)
			handler := func(w http.ResponseWriter, r *http.Request) {
				run := runs.Add(1)
				<-ready
				started <- struct{}{}
				assert.True(t, p.waiting(r.Context()), "the duplicate never waited")
				now := time.Now()
				returned.Store(&now)
				writeJSON(w, chargeJSON("L", run))
			}
			first, dup, pr := tt.start(t, handler)
			p = pr
			close(ready)

			latencies := make([]time.Duration, 0, waitLatencyRounds)
			for range waitLatencyRounds {
				key := newKey()
				fromFirst := make(chan answer, 1)
				go func() {
					ans, err := first.send(t.Context(), key, chargeBody)
					assert.NoError(t, err)
					fromFirst <- ans
				}()
				receive(t, started, startTimeout, "the first handler's start")
				p.reset()
				d := dup.post(t, key)
				f := receive(t, fromFirst, 5*time.Second, "the first request's answer")
				require.True(t, assertReplayOf(t, f, d, "the duplicate gets the first's answer"))
				latencies = append(latencies, d.at.Sub(*returned.Load()))
			}
			assert.Equal(t, int64(waitLatencyRounds), runs.Load(), "one run per key")
			median, worst := percentiles(latencies)
			t.Logf("%s: a waiting duplicate was answered %v (median) and %v (worst of %d) after the first handler returned",
				tt.name, median.Round(10*time.Microsecond), worst.Round(10*time.Microsecond), waitLatencyRounds)
			assert.Less(t, median, 500*time.Millisecond)
			assert.Less(t, worst, 4*time.Second, "below the store's 5 s poll")
		})
	}
}

// signalWaits reports each Wait that the engine starts on the store it
// wraps.
type signalWaits struct {
	*memory.Store
	entered chan struct{}
}

func (s *signalWaits) Wait(ctx context.Context, key string) error {
	// A Wait that returned early is followed by another: only the first
	// needs to be seen.
	select {
	case s.entered <- struct{}{}:
	default:
	}
	return s.Store.Wait(ctx, key)
}
