package idempotency

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// answerStore answers every claim with the same state and record, and
// accepts every other call: a store that costs nothing, so that what is
// measured is the engine.
type answerStore struct{ res ClaimResult }

func (s *answerStore) Claim(context.Context, string, string, time.Duration) (ClaimResult, error) {
	return s.res, nil
}
func (*answerStore) Complete(context.Context, string, string, []byte, time.Duration) error {
	return nil
}
func (*answerStore) Release(context.Context, string, string) error { return nil }
func (*answerStore) Renew(context.Context, string, string, time.Duration) error {
	return nil
}
func (*answerStore) NonBlocking() {}

func TestObservingAllocatesNothing(t *testing.T) {
	rec := &Record{Status: 201, Header: http.Header{"Content-Type": {"application/json"}}, Body: []byte(`{}`)}
	stored := appendRecord(nil, rec)
	r := Request{Route: "POST /charges/ch_1", Pattern: "POST /charges/{id}", Key: "k"}
	ctx := t.Context()

	for _, tt := range []struct {
		name string
		opts []Option
	}{
		{name: "nothing configured"},
		{name: "an observer", opts: []Option{WithObserver(func(context.Context, Decision) {})}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			replays := NewEngine(&answerStore{ClaimResult{State: StateCompleted, Record: stored}}, tt.opts...)
			unobserved := testing.AllocsPerRun(200, func() {
				_, got, err := replays.begin(ctx, r, &observation{})
				require.NoError(t, err)
				require.NotNil(t, got)
			})
			observed := testing.AllocsPerRun(200, func() {
				_, got, err := replays.Begin(ctx, r)
				require.NoError(t, err)
				require.NotNil(t, got)
			})
			assert.InDelta(t, unobserved, observed, 0, "a replay")

			runs := NewEngine(&answerStore{ClaimResult{State: StateClaimed}}, tt.opts...)
			unobserved = testing.AllocsPerRun(200, func() {
				x, _, err := runs.begin(ctx, r, &observation{})
				require.NoError(t, err)
				require.NoError(t, x.Complete(rec))
			})
			observed = testing.AllocsPerRun(200, func() {
				x, _, err := runs.Begin(ctx, r)
				require.NoError(t, err)
				require.NoError(t, x.Complete(rec))
			})
			assert.InDelta(t, unobserved, observed, 0, "an execution")

			assert.Zero(t, testing.AllocsPerRun(200, func() { runs.Rejected(ctx, "POST", ErrInvalidKey) }), "a rejection")
		})
	}
}

func TestMetricRoute(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		req  Request
		want string
	}{
		{name: "pattern", req: Request{Route: "POST /orders/o_1", Pattern: "POST /orders/{id}"}, want: "POST /orders/{id}"},
		{name: "HTTP without pattern", req: Request{Route: "POST /orders/o_1"}, want: "POST"},
		{name: "procedure", req: Request{Route: "/pkg.v1.Orders/Create"}, want: "/pkg.v1.Orders/Create"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.want, metricRoute(&tt.req))
		})
	}
}

func TestDecisionSeriesAreBounded(t *testing.T) {
	t.Parallel()
	o := newObserver(obsConfig{}, NewEngine(&answerStore{}).cfg.logger)
	for i := range maxSeries + 10 {
		o.decisionAttrs("route-"+string(rune('a'+i%26))+time.Duration(i).String(), OutcomeExecuted, "")
	}
	o.mu.RLock()
	defer o.mu.RUnlock()
	assert.LessOrEqual(t, len(o.counted), maxSeries+1)
	_, ok := o.counted[decisionKey{"_OTHER", OutcomeExecuted, ""}]
	assert.True(t, ok, "routes past the bound share one series")
}

// BenchmarkObservingOff compares, with nothing configured, the engine's
// path through Begin (and Complete) with the same path with observing
// bypassed, on a store that costs nothing: what remains is the check
// whether anything listens.
func BenchmarkObservingOff(b *testing.B) {
	rec := &Record{Status: 201, Header: http.Header{"Content-Type": {"application/json"}}, Body: []byte(`{}`)}
	stored := appendRecord(nil, rec)
	r := Request{Route: "POST /charges/ch_1", Pattern: "POST /charges/{id}", Key: "k"}
	replays := NewEngine(&answerStore{ClaimResult{State: StateCompleted, Record: stored}})
	runs := NewEngine(&answerStore{ClaimResult{State: StateClaimed}})
	b.Run("replay/bypassed", func(b *testing.B) {
		for b.Loop() {
			_, _, _ = replays.begin(b.Context(), r, &observation{})
		}
	})
	b.Run("replay/observed", func(b *testing.B) {
		for b.Loop() {
			_, _, _ = replays.Begin(b.Context(), r)
		}
	})
	b.Run("first/bypassed", func(b *testing.B) {
		for b.Loop() {
			x, _, _ := runs.begin(b.Context(), r, &observation{})
			_ = x.Complete(rec)
		}
	})
	b.Run("first/observed", func(b *testing.B) {
		for b.Loop() {
			x, _, _ := runs.Begin(b.Context(), r)
			_ = x.Complete(rec)
		}
	})
}
