package adaptertest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/otelcheck"
	"github.com/idemkey/idempotency/store/memory"
)

// Procedure is the guarded RPC's procedure, the route its metrics name.
const Procedure = paymentsv1.PaymentService_Charge_FullMethodName

// rawKey is a client's key that must never appear in telemetry.
const rawKey = "raw-client-key-7f3a"

// downStore is a store whose claims fail.
type downStore struct{ idempotency.Store }

func (downStore) Claim(context.Context, string, string, time.Duration) (idempotency.ClaimResult, error) {
	return idempotency.ClaimResult{}, errors.New("store down")
}

type observeCase struct {
	name    string
	store   idempotency.Store
	opts    []idempotency.Option
	handler Handler
	// run makes the calls through protocol p; the handler blocks until
	// release is closed when blocking is set.
	run  func(t *testing.T, srv Server, p string)
	want map[string]int64
}

// RunObservability checks, through the first of a's protocols, that each
// outcome of a request is counted exactly once on the decisions counter
// and told once to an observer, with the procedure for route, and that no
// attribute holds the client's key.
func RunObservability(t *testing.T, a Adapter) {
	t.Helper()
	call := func(t *testing.T, srv Server, p, key, account string) Result {
		t.Helper()
		var keys []string
		if key != "" {
			keys = []string{key}
		}
		return srv.Call(t.Context(), p, keys, Request(account))
	}
	code := func(r Result) uint32 {
		if r.Err == nil {
			return 0
		}
		return r.Err.Code
	}
	panicky := func(context.Context, *paymentsv1.ChargeRequest, Metadata) (*paymentsv1.ChargeResponse, error) {
		panic("handler failed")
	}
	const route = Procedure
	tests := []observeCase{
		{
			name: "executed and replayed",
			run: func(t *testing.T, srv Server, p string) {
				require.Nil(t, call(t, srv, p, rawKey, "acct").Err)
				replay := call(t, srv, p, rawKey, "acct")
				require.Nil(t, replay.Err)
				require.Equal(t, "true", replay.Meta(idempotency.DefaultReplayHeader))
			},
			want: map[string]int64{"executed " + route: 1, "replayed " + route: 1},
		},
		{
			name: "mismatch",
			run: func(t *testing.T, srv Server, p string) {
				require.Nil(t, call(t, srv, p, rawKey, "acct").Err)
				require.Equal(t, uint32(CodeInvalidArgument), code(call(t, srv, p, rawKey, "other")))
			},
			want: map[string]int64{"executed " + route: 1, "mismatch " + route: 1},
		},
		{
			name: "invalid key",
			run: func(t *testing.T, srv Server, p string) {
				require.Equal(t, uint32(CodeInvalidArgument), code(call(t, srv, p, rawKey+strings.Repeat("k", 256), "acct")))
			},
			want: map[string]int64{"invalid-key " + route: 1},
		},
		{
			name: "key required",
			opts: []idempotency.Option{idempotency.WithRequireKey(true)},
			run: func(t *testing.T, srv Server, p string) {
				require.Equal(t, uint32(CodeInvalidArgument), code(call(t, srv, p, "", "acct")))
			},
			want: map[string]int64{"key-required " + route: 1},
		},
		{
			name:  "store unavailable",
			store: downStore{},
			run: func(t *testing.T, srv Server, p string) {
				require.Equal(t, uint32(CodeUnavailable), code(call(t, srv, p, rawKey, "acct")))
			},
			want: map[string]int64{"store-unavailable " + route: 1},
		},
		{
			name: "not stored, too large",
			opts: []idempotency.Option{idempotency.WithMaxResponseSize(8)},
			run: func(t *testing.T, srv Server, p string) {
				require.Nil(t, call(t, srv, p, rawKey, "acct").Err, "the client gets the answer")
				again := call(t, srv, p, rawKey, "acct")
				require.Nil(t, again.Err)
				require.Empty(t, again.Meta(idempotency.DefaultReplayHeader), "nothing stored: the handler runs again")
			},
			want: map[string]int64{"not-stored " + route + " too-large": 2},
		},
		{
			name:    "not stored, panic",
			handler: panicky,
			run: func(t *testing.T, srv Server, p string) {
				require.NotNil(t, call(t, srv, p, rawKey, "acct").Err, "a panic is an error")
			},
			want: map[string]int64{"not-stored " + route + " panic": 1},
		},
	}
	p := a.Protocols[0]
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			meters := otelcheck.NewMeters(t)
			var log otelcheck.Log
			store := tt.store
			if store == nil {
				store = memory.New()
			}
			handler := tt.handler
			if handler == nil {
				handler = Charge
			}
			opts := append([]idempotency.Option{meters.Option, idempotency.WithObserver(log.Observe)}, tt.opts...)
			srv := start(t, a, handler, store, opts...)

			tt.run(t, srv, p)

			checkCounts(t, meters, &log, tt.want)
		})
	}
	t.Run("in flight", func(t *testing.T) {
		t.Parallel()
		meters := otelcheck.NewMeters(t)
		var log otelcheck.Log
		started, release := make(chan struct{}), make(chan struct{})
		h := func(ctx context.Context, req *paymentsv1.ChargeRequest, md Metadata) (*paymentsv1.ChargeResponse, error) {
			close(started)
			<-release
			return Charge(ctx, req, md)
		}
		srv := start(t, a, h, memory.New(), meters.Option, idempotency.WithObserver(log.Observe))
		first := make(chan Result, 1)
		go func() { first <- srv.Call(context.WithoutCancel(t.Context()), p, []string{rawKey}, Request("acct")) }()
		<-started
		dup := call(t, srv, p, rawKey, "acct")
		close(release)
		require.Equal(t, uint32(CodeAborted), code(dup))
		require.Nil(t, (<-first).Err)

		checkCounts(t, meters, &log, map[string]int64{"in-flight " + route: 1, "executed " + route: 1})
	})
}

// checkCounts asserts that the counter and the observer saw want, and that
// no metric attribute nor decision holds the raw key.
func checkCounts(t *testing.T, meters *otelcheck.Meters, log *otelcheck.Log, want map[string]int64) {
	t.Helper()
	assert.Equal(t, want, meters.Decisions(t), "the counter")
	assert.Equal(t, want, log.Series(), "the observer")
	meters.RequireNoKey(t, rawKey)
	for _, d := range log.Decisions() {
		assert.NotContains(t, d.KeyHash, rawKey)
		assert.Equal(t, Procedure, d.Route)
	}
}
