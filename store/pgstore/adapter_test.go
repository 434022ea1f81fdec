package pgstore_test

import (
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1/paymentsv1connect"
	"github.com/idemkey/idempotency/store/pgstore"
)

// payments is a PaymentService whose Charge writes to the ledger through
// pgstore.Tx, its only contact with the library. fail, if set, decides the
// error a call answers after its write.
type payments struct {
	paymentsv1connect.UnimplementedPaymentServiceHandler
	ledger *ledger
	writer string
	fail   func() error
}

func (p *payments) Charge(ctx context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
	id, err := p.ledger.charge(ctx, req.Msg.GetMetadata()["order"], p.writer)
	if err != nil {
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	if p.fail != nil {
		if err := p.fail(); err != nil {
			return nil, err
		}
	}
	return connect.NewResponse(&paymentsv1.ChargeResponse{ChargeId: strconv.FormatInt(id, 10)}), nil
}

func serveConnect(t *testing.T, svc *payments, store idempotency.Store, opts ...idempotency.Option) paymentsv1connect.PaymentServiceClient {
	t.Helper()
	opts = append([]idempotency.Option{quiet}, opts...)
	mux := http.NewServeMux()
	mux.Handle(paymentsv1connect.NewPaymentServiceHandler(svc,
		connect.WithInterceptors(idempotency.NewInterceptor(store, opts...))))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL)
}

func chargeOf(key, order string) *connect.Request[paymentsv1.ChargeRequest] {
	req := connect.NewRequest(&paymentsv1.ChargeRequest{AccountId: "acct", AmountCents: 100,
		Metadata: map[string]string{"order": order}})
	req.Header().Set(idempotency.DefaultIdempotencyHeader, key)
	return req
}

func TestConnectHandlerCommitsInTx(t *testing.T) {
	t.Parallel()
	pool := newPool(t, nil)
	store := newStore(t, pool)
	l := newLedger(t, pool)
	policy := idempotency.WithStorePolicy(idempotency.StoreUnlessServerError)

	t.Run("stored", func(t *testing.T) {
		t.Parallel()
		client := serveConnect(t, &payments{ledger: l, writer: "rpc"}, store, policy)
		key, order := rand.Text(), rand.Text()
		res, err := client.Charge(t.Context(), chargeOf(key, order))
		require.NoError(t, err)
		again, err := client.Charge(t.Context(), chargeOf(key, order))
		require.NoError(t, err)
		assert.Equal(t, "true", again.Header().Get(idempotency.DefaultReplayHeader))
		assert.Equal(t, res.Msg.GetChargeId(), again.Msg.GetChargeId())
		assert.Equal(t, []string{"rpc"}, l.writers(t, order))
	})
	tests := []struct {
		name     string
		fail     func() error
		wantCode connect.Code
	}{
		{name: "stored error commits", wantCode: connect.CodeNotFound,
			fail: func() error { return connect.NewError(connect.CodeNotFound, errors.New("no such account")) }},
		{name: "error the policy does not store rolls back", wantCode: connect.CodeUnavailable,
			fail: func() error { return connect.NewError(connect.CodeUnavailable, errors.New("try later")) }},
		{name: "panic rolls back", wantCode: connect.CodeUnavailable,
			fail: func() error { panic(http.ErrAbortHandler) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var failed atomic.Bool
			client := serveConnect(t, &payments{ledger: l, writer: "rpc", fail: func() error {
				if failed.Swap(true) {
					return nil // the retry succeeds
				}
				return tt.fail()
			}}, store, policy)
			key, order := rand.Text(), rand.Text()
			_, err := client.Charge(t.Context(), chargeOf(key, order))
			require.Equal(t, tt.wantCode, connect.CodeOf(err), "%v", err)
			res, err := client.Charge(t.Context(), chargeOf(key, order))
			if tt.wantCode == connect.CodeNotFound {
				// Stored: its write committed, and the retry replays it.
				assert.Equal(t, tt.wantCode, connect.CodeOf(err))
				assert.Equal(t, []string{"rpc"}, l.writers(t, order))
				return
			}
			require.NoError(t, err, "the retry runs")
			assert.NotEmpty(t, res.Msg.GetChargeId())
			assert.Equal(t, []string{"rpc"}, l.writers(t, order), "only the retry's write is committed")
		})
	}
}

// TestConnectLeaseLost: behind the interceptor too, a holder that lost its
// lease commits nothing and its client gets CodeUnavailable.
func TestConnectLeaseLost(t *testing.T) {
	t.Parallel()
	pool := newPool(t, nil)
	table := newTable(t, pool)
	l := newLedger(t, pool)
	storeA := pgstore.New(pool, table, pgstore.WithSweepInterval(0))
	storeB := pgstore.New(pool, table, pgstore.WithSweepInterval(0))
	t.Cleanup(func() { _ = storeA.Close(); _ = storeB.Close() })
	wrote, proceed := make(chan struct{}), make(chan struct{})
	late := serveConnect(t, &payments{ledger: l, writer: "late", fail: func() error {
		close(wrote)
		<-proceed
		return nil
	}}, frozenRenewals{storeA}, idempotency.WithLease(500*time.Millisecond))
	next := serveConnect(t, &payments{ledger: l, writer: "next"}, storeB,
		idempotency.WithWait(10*time.Second))

	key, order := rand.Text(), rand.Text()
	lateErr := make(chan error, 1)
	go func() {
		_, err := late.Charge(context.Background(), chargeOf(key, order))
		lateErr <- err
	}()
	<-wrote
	res, err := next.Charge(t.Context(), chargeOf(key, order))
	require.NoError(t, err)
	close(proceed)

	err = <-lateErr
	require.Equal(t, connect.CodeUnavailable, connect.CodeOf(err), "%v", err)
	var ce *connect.Error
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, idempotency.StatusStoreUnavailable, ce.Meta().Get(idempotency.StatusHeader))
	assert.Equal(t, []string{"next"}, l.writers(t, order))
	again, err := late.Charge(t.Context(), chargeOf(key, order))
	require.NoError(t, err)
	assert.Equal(t, res.Msg.GetChargeId(), again.Msg.GetChargeId())
}
