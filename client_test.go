package idempotency_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/idemkey/idempotency"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1/paymentsv1connect"
)

// lossyTransport delivers requests to the server but loses the answers of
// the first `lose` of them, as a network that drops a connection after the
// server answered does. It records the key of every request it sends.
type lossyTransport struct {
	base http.RoundTripper
	lose atomic.Int64
	mu   sync.Mutex
	keys []string
}

func (l *lossyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	l.mu.Lock()
	l.keys = append(l.keys, r.Header.Get(idempotency.DefaultIdempotencyHeader))
	l.mu.Unlock()
	res, err := l.base.RoundTrip(r)
	if err == nil && l.lose.Add(-1) >= 0 {
		// Read the whole answer, so the handler has surely finished, then
		// drop it.
		_, _ = res.Body.Read(make([]byte, 1<<16))
		_ = res.Body.Close()
		return nil, errors.New("connection reset by peer")
	}
	return res, err
}

func (l *lossyTransport) sentKeys() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.keys...)
}

func lossyClient(t *testing.T, svc *paymentServer, lose int64, opts ...idempotency.Option) (paymentsv1connect.PaymentServiceClient, *lossyTransport) {
	t.Helper()
	return lossyProtocolClient(t, svc, lose, nil, opts...)
}

func lossyProtocolClient(t *testing.T, svc *paymentServer, lose int64, copts []connect.ClientOption, opts ...idempotency.Option) (paymentsv1connect.PaymentServiceClient, *lossyTransport) {
	t.Helper()
	srv := serve(t, svc, connect.WithInterceptors(idempotency.NewInterceptor(newMemory(t), quiet)))
	tr := &lossyTransport{base: srv.Client().Transport}
	tr.lose.Store(lose)
	opts = append([]idempotency.Option{idempotency.WithBackoff(time.Millisecond, 10*time.Millisecond)}, opts...)
	copts = append(copts, connect.WithInterceptors(idempotency.NewClientInterceptor(opts...)))
	client := paymentsv1connect.NewPaymentServiceClient(&http.Client{Transport: tr}, srv.URL, copts...)
	return client, tr
}

func TestClientRetriesLostResponseWithSameKey(t *testing.T) {
	t.Parallel()
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			svc := &paymentServer{charge: chargeHandler}
			client, tr := lossyProtocolClient(t, svc, 1, p.opts)
			res, err := client.Charge(t.Context(), chargeRequest(""))
			require.NoError(t, err)
			assert.EqualValues(t, 1, svc.chargeRuns.Load(), "the handler ran once")
			assert.Equal(t, "true", res.Header().Get(idempotency.DefaultReplayHeader), "the retry got the first execution's answer")

			keys := tr.sentKeys()
			require.Len(t, keys, 2)
			assert.Equal(t, keys[0], keys[1], "one key for every attempt")
			u, err := uuid.Parse(keys[0])
			require.NoError(t, err)
			assert.EqualValues(t, 4, u.Version())
		})
	}
}

func TestClientKeepsCallersKey(t *testing.T) {
	t.Parallel()
	svc := &paymentServer{charge: chargeHandler}
	client, tr := lossyClient(t, svc, 0)
	_, err := client.Charge(t.Context(), chargeRequest("caller-key"))
	require.NoError(t, err)
	assert.Equal(t, []string{"caller-key"}, tr.sentKeys())

	// A fresh key for each call.
	_, err = client.Charge(t.Context(), chargeRequest(""))
	require.NoError(t, err)
	_, err = client.Charge(t.Context(), chargeRequest(""))
	require.NoError(t, err)
	keys := tr.sentKeys()
	require.Len(t, keys, 3)
	assert.NotEqual(t, keys[1], keys[2])
}

func TestClientSkipsSafeProcedures(t *testing.T) {
	t.Parallel()
	svc := &paymentServer{
		getCharge: func(context.Context, *connect.Request[paymentsv1.GetChargeRequest]) (*connect.Response[paymentsv1.GetChargeResponse], error) {
			return connect.NewResponse(&paymentsv1.GetChargeResponse{}), nil
		},
		refund: func(context.Context, *connect.Request[paymentsv1.RefundRequest]) (*connect.Response[paymentsv1.RefundResponse], error) {
			return connect.NewResponse(&paymentsv1.RefundResponse{}), nil
		},
	}
	client, tr := lossyClient(t, svc, 0)
	_, err := client.GetCharge(t.Context(), connect.NewRequest(&paymentsv1.GetChargeRequest{}))
	require.NoError(t, err)
	_, err = client.Refund(t.Context(), connect.NewRequest(&paymentsv1.RefundRequest{}))
	require.NoError(t, err)
	assert.Equal(t, []string{"", ""}, tr.sentKeys(), "NO_SIDE_EFFECTS and IDEMPOTENT calls get no key")
}

func TestClientNeverRetriesHandlerAnswers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
	}{
		{name: "handler's own aborted", err: connect.NewError(connect.CodeAborted, errors.New("conflict in the ledger"))},
		{name: "handler's unavailable", err: connect.NewError(connect.CodeUnavailable, errors.New("bank down"))},
		{name: "plain error", err: errors.New("boom")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			svc := &paymentServer{charge: func(context.Context, *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
				return nil, tt.err
			}}
			client, tr := lossyClient(t, svc, 0)
			_, err := client.Charge(t.Context(), chargeRequest(""))
			require.Error(t, err)
			assert.Len(t, tr.sentKeys(), 1, "an answer the handler gave is not retried")
			assert.EqualValues(t, 1, svc.chargeRuns.Load())
		})
	}
}

func TestClientWaitsOutAnotherCallersClaim(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	started := make(chan struct{})
	var once sync.Once
	svc := &paymentServer{charge: func(ctx context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
		once.Do(func() { close(started) })
		<-release
		return chargeHandler(ctx, req)
	}}
	client, tr := lossyClient(t, svc, 0, idempotency.WithMaxRetries(50))

	first := make(chan *connect.Response[paymentsv1.ChargeResponse], 1)
	go func() {
		res, err := client.Charge(context.Background(), chargeRequest("shared"))
		assert.NoError(t, err)
		first <- res
	}()
	<-started
	second := make(chan *connect.Response[paymentsv1.ChargeResponse], 1)
	go func() {
		res, err := client.Charge(context.Background(), chargeRequest("shared"))
		assert.NoError(t, err)
		second <- res
	}()
	// The second caller is turned away as in flight at least once before the
	// first finishes.
	require.Eventually(t, func() bool { return len(tr.sentKeys()) >= 3 }, 10*time.Second, time.Millisecond)
	close(release)
	a, b := <-first, <-second
	require.NotNil(t, a)
	require.NotNil(t, b)
	assert.True(t, proto.Equal(a.Msg, b.Msg), "the second caller got the first caller's result")
	assert.Equal(t, "true", b.Header().Get(idempotency.DefaultReplayHeader))
	assert.EqualValues(t, 1, svc.chargeRuns.Load())
}

func TestClientRetryBudgetAndContext(t *testing.T) {
	t.Parallel()
	svc := &paymentServer{charge: chargeHandler}
	client, tr := lossyClient(t, svc, 100, idempotency.WithMaxRetries(2))
	_, err := client.Charge(t.Context(), chargeRequest(""))
	require.Error(t, err)
	assert.Len(t, tr.sentKeys(), 3, "one call and two retries")

	client, tr = lossyClient(t, svc, 100, idempotency.WithMaxRetries(1000), idempotency.WithBackoff(20*time.Millisecond, 20*time.Millisecond))
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = client.Charge(ctx, chargeRequest(""))
	require.Error(t, err)
	assert.Less(t, time.Since(start), 5*time.Second, "the caller's context bounds the retries")
	assert.Less(t, len(tr.sentKeys()), 1000)
}

func TestClientHonoursRetryAfterUpToMaxBackoff(t *testing.T) {
	t.Parallel()
	// The server hints 1 s; the client's maximum backoff is 50 ms, so it
	// must retry well before the hint.
	hold := make(chan struct{})
	started := make(chan struct{})
	var once sync.Once
	svc := &paymentServer{charge: func(ctx context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
		once.Do(func() { close(started) })
		<-hold
		return chargeHandler(ctx, req)
	}}
	client, tr := lossyClient(t, svc, 0, idempotency.WithMaxRetries(3), idempotency.WithBackoff(50*time.Millisecond, 50*time.Millisecond))
	go func() {
		_, _ = client.Charge(context.Background(), chargeRequest("busy"))
	}()
	<-started
	start := time.Now()
	_, err := client.Charge(t.Context(), chargeRequest("busy"))
	elapsed := time.Since(start)
	close(hold)
	require.Error(t, err)
	var cerr *connect.Error
	require.ErrorAs(t, err, &cerr)
	assert.Equal(t, connect.CodeAborted, cerr.Code())
	assert.Len(t, tr.sentKeys(), 5, "the first caller's call, and one call and three retries")
	// Three retries that honoured the hint would take 3 s; the margin below
	// that is for a busy machine.
	assert.Less(t, elapsed, 2500*time.Millisecond, "retries wait at most the maximum backoff, not the 1 s hint")
}
