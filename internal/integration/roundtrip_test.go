package integration

import (
	"context"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/redistest"
)

// roundTripLease is long enough that no renewal, at a third of it, falls
// inside a counted request.
const roundTripLease = time.Minute

// Budgets of round trips per request kind, as a go-redis hook on the
// store's client counts them (SPEC §3.3, §8.3).
const (
	maxFirstRoundTrips    = 2 // claim, then complete
	maxReplayRoundTrips   = 1 // claim, which returns the record
	maxConflictRoundTrips = 1 // claim, which finds the key in flight
)

// gate lets a test hold a handler while it sends a duplicate.
type gate struct {
	entered chan struct{}
	open    chan struct{}
}

func newGate() *gate { return &gate{entered: make(chan struct{}, 1), open: make(chan struct{})} }

// pass signals that the handler is running and waits until the test opens
// the gate.
func (g *gate) pass(ctx context.Context) {
	g.entered <- struct{}{}
	select {
	case <-g.open:
	case <-ctx.Done():
	}
}

// TestRoundTrips counts the round trips that each kind of request costs
// the store's Redis client, through the middleware and through the
// interceptor: at most 2 for a first execution, 1 for a replay and 1 for
// an in-flight conflict.
func TestRoundTrips(t *testing.T) {
	t.Parallel()
	// Each kind sends its request inside measure, which counts what the
	// store's client sent meanwhile; the held request of a conflict is sent
	// outside it.
	type kinds struct {
		first, replay, conflict func(t *testing.T, measure func(func()))
	}
	tests := []struct {
		name  string
		start func(t *testing.T, store idempotency.Store, g *gate) kinds
	}{
		{name: "middleware", start: func(t *testing.T, store idempotency.Store, g *gate) kinds {
			in := startHTTP(t, store, func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("X-Hold") != "" {
					g.pass(r.Context())
				}
				writeJSON(w, chargeJSON("rt", 1))
			}, idempotency.WithLease(roundTripLease))
			key, heldKey := newKey(), newKey()
			return kinds{
				first: func(t *testing.T, measure func(func())) {
					measure(func() { assertExecuted(t, in.post(t, key)) })
				},
				replay: func(t *testing.T, measure func(func())) {
					measure(func() { assert.True(t, in.post(t, key).replayed()) })
				},
				conflict: func(t *testing.T, measure func(func())) {
					held := make(chan answer, 1)
					go func() {
						req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, in.url+chargePath, nil)
						req.Header.Set(keyHeader, heldKey)
						req.Header.Set("X-Hold", "1")
						if resp, err := in.client.Do(req); err == nil {
							_ = resp.Body.Close()
							held <- answer{status: resp.StatusCode}
						}
					}()
					receive(t, g.entered, startTimeout, "the held handler's start")
					measure(func() {
						conflict, err := in.send(t.Context(), heldKey, "")
						require.NoError(t, err)
						assertConflict(t, conflict)
					})
					close(g.open)
					assert.Equal(t, http.StatusOK, receive(t, held, 5*time.Second, "the held request's answer").status)
				},
			}
		}},
		{name: "interceptor", start: func(t *testing.T, store idempotency.Store, g *gate) kinds {
			client := startConnect(t, store, func(ctx context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
				if req.Msg.GetMetadata()["hold"] != "" {
					g.pass(ctx)
				}
				return chargeResponse("rt", 1), nil
			}, idempotency.WithLease(roundTripLease))
			key, heldKey := newKey(), newKey()
			heldRequest := func() *connect.Request[paymentsv1.ChargeRequest] {
				req := chargeRequest(heldKey)
				req.Msg.Metadata = map[string]string{"hold": "1"}
				return req
			}
			return kinds{
				first: func(t *testing.T, measure func(func())) {
					measure(func() {
						res, err := client.Charge(t.Context(), chargeRequest(key))
						require.NoError(t, err)
						assert.Empty(t, res.Header().Get(replayHeader))
					})
				},
				replay: func(t *testing.T, measure func(func())) {
					measure(func() {
						res, err := client.Charge(t.Context(), chargeRequest(key))
						require.NoError(t, err)
						assert.Equal(t, "true", res.Header().Get(replayHeader))
					})
				},
				conflict: func(t *testing.T, measure func(func())) {
					held := make(chan error, 1)
					go func() {
						_, err := client.Charge(t.Context(), heldRequest())
						held <- err
					}()
					receive(t, g.entered, startTimeout, "the held handler's start")
					measure(func() {
						_, err := client.Charge(t.Context(), heldRequest())
						var ce *connect.Error
						require.ErrorAs(t, err, &ce)
						assert.Equal(t, connect.CodeAborted, ce.Code())
					})
					close(g.open)
					assert.NoError(t, receive(t, held, 5*time.Second, "the held call's answer"))
				},
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := redistest.Client(t)
			counter := redistest.NewCounter(c)
			store := newStore(t, c, redistest.Prefix(t, c))

			// A first run loads the scripts into Redis, so that what is
			// counted below is the steady state: one EVALSHA per call.
			warm := tt.start(t, store, newGate())
			warm.first(t, func(run func()) { run() })
			warm.conflict(t, func(run func()) { run() })

			k := tt.start(t, store, newGate())
			steps := []struct {
				name string
				kind func(t *testing.T, measure func(func()))
				want int
			}{
				{name: "first execution", kind: k.first, want: maxFirstRoundTrips},
				{name: "replay", kind: k.replay, want: maxReplayRoundTrips},
				{name: "in-flight conflict", kind: k.conflict, want: maxConflictRoundTrips},
			}
			for _, step := range steps {
				step.kind(t, func(run func()) {
					counter.Reset()
					run()
					names := counter.Names()
					t.Logf("%s, %s: %d round trips %v", tt.name, step.name, len(names), names)
					assert.LessOrEqual(t, len(names), step.want, step.name)
					assert.NotEmpty(t, names, "%s must ask Redis", step.name)
				})
			}
		})
	}
}
