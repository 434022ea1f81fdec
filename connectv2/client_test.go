package connectv2_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"
	"connectrpc.com/connect/v2/connectinprocess"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/connectv2"
	"github.com/idemkey/idempotency/internal/adaptertest"
	"github.com/idemkey/idempotency/internal/gen/connectv2/idemkey/payments/v1/paymentsv1connect"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/store/memory"
)

// keyLog is a server interceptor that records the key of every call it
// sees, outermost, before the idempotency interceptor answers, and reports
// on seen each call that was answered.
type keyLog struct {
	mu   sync.Mutex
	keys []string
	seen chan string
}

func newKeyLog() *keyLog { return &keyLog{seen: make(chan string, 64)} }

func (l *keyLog) intercept(next connect.ServerFunc) connect.ServerFunc {
	return func(ctx context.Context, spec connect.Spec, stream connect.ServerStream) error {
		info, _ := connect.CallInfoForServerContext(ctx)
		key := info.RequestHeader().Get(idempotency.DefaultIdempotencyHeader)
		l.mu.Lock()
		l.keys = append(l.keys, key)
		l.mu.Unlock()
		err := next(ctx, spec, stream)
		l.seen <- key
		return err
	}
}

func (l *keyLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.keys...)
}

// fast is a client backoff that keeps tests short.
var fast = idempotency.WithBackoff(time.Millisecond, 5*time.Millisecond)

// retryingClients are clients with the retry-safe interceptor for a
// started v2 server, by protocol.
func retryingClients(t *testing.T, server *connect.Server, opts ...idempotency.Option) map[string]paymentsv1connect.PaymentServiceClient {
	t.Helper()
	hs := serveV2(t, server)
	ci := connectv2.NewClientInterceptor(append([]idempotency.Option{fast}, opts...)...)
	clients := map[string]paymentsv1connect.PaymentServiceClient{
		"inprocess": paymentsv1connect.NewPaymentServiceClient(connect.NewClient(connectinprocess.New(server), ci)),
	}
	for name, o := range v2Protocols {
		clients[name] = paymentsv1connect.NewPaymentServiceClient(connect.NewClient(connecthttp.NewTransport(hs.Client(), hs.URL, o...), ci))
	}
	return clients
}

func TestClientInterceptorRetriesInFlight(t *testing.T) {
	t.Parallel()
	for _, p := range v2Adapter.Protocols {
		t.Run(p, func(t *testing.T) {
			t.Parallel()
			started, release := make(chan struct{}), make(chan struct{})
			var once sync.Once
			log := newKeyLog()
			server := connect.NewServer(log.intercept, connectv2.NewServerInterceptor(memory.New(), quiet))
			paymentsv1connect.RegisterPaymentServiceHandler(server, &service{charge: func(ctx context.Context, req *paymentsv1.ChargeRequest, md adaptertest.Metadata) (*paymentsv1.ChargeResponse, error) {
				once.Do(func() { close(started) })
				<-release
				return adaptertest.Charge(ctx, req, md)
			}})
			clients := retryingClients(t, server)

			first := make(chan error, 1)
			ctx, _ := connect.NewClientContext(t.Context())
			info, _ := connect.CallInfoForClientContext(ctx)
			info.RequestHeader().Set(idempotency.DefaultIdempotencyHeader, "key-1")
			go func() {
				_, err := clients[p].Charge(ctx, adaptertest.Request("acct"))
				first <- err
			}()
			<-started

			ctx2, info2 := connect.NewClientContext(t.Context())
			info2.RequestHeader().Set(idempotency.DefaultIdempotencyHeader, "key-1")
			second := make(chan error, 1)
			var res *paymentsv1.ChargeResponse
			go func() {
				var err error
				res, err = clients[p].Charge(ctx2, adaptertest.Request("acct"))
				second <- err
			}()
			<-log.seen // the duplicate's first attempt was answered: in flight
			close(release)
			require.NoError(t, <-first)
			require.NoError(t, <-second)
			assert.Equal(t, "succeeded", res.GetStatus())
			assert.Equal(t, "true", info2.ResponseHeader().Get(idempotency.DefaultReplayHeader), "the final attempt's headers")
			assert.Empty(t, info2.ResponseHeader().Get(idempotency.StatusHeader), "not the in-flight attempt's")
			keys := log.all()
			assert.GreaterOrEqual(t, len(keys), 3, "the duplicate was retried")
			for _, k := range keys {
				assert.Equal(t, "key-1", k)
			}
		})
	}
}

func TestClientInterceptorKeys(t *testing.T) {
	t.Parallel()
	log := newKeyLog()
	server := connect.NewServer(log.intercept, connectv2.NewServerInterceptor(memory.New(), quiet))
	paymentsv1connect.RegisterPaymentServiceHandler(server, &service{charge: adaptertest.Charge})
	client := retryingClients(t, server)["connect+proto"]

	// One call info reused for two calls: two keys, and the caller's
	// headers never get one.
	ctx, info := connect.NewClientContext(t.Context())
	info.RequestHeader().Set("X-Caller", "c")
	for range 2 {
		_, err := client.Charge(ctx, adaptertest.Request("acct"))
		require.NoError(t, err)
		assert.Empty(t, info.RequestHeader().Get(idempotency.DefaultIdempotencyHeader))
		assert.Empty(t, info.ResponseHeader().Get(idempotency.DefaultReplayHeader), "a new key is a new call")
	}
	keys := log.all()
	require.Len(t, keys, 2)
	assert.NotEqual(t, keys[0], keys[1])
	for _, k := range keys {
		assert.Len(t, k, 36, "a UUID")
	}

	// A key the caller set is the key.
	ctx, info = connect.NewClientContext(t.Context())
	info.RequestHeader().Set(idempotency.DefaultIdempotencyHeader, "mine")
	_, err := client.Charge(ctx, adaptertest.Request("acct"))
	require.NoError(t, err)
	assert.Equal(t, "mine", log.all()[2])
}

func TestClientInterceptorNeverRetriesHandlerAnswers(t *testing.T) {
	t.Parallel()
	log := newKeyLog()
	server := connect.NewServer(log.intercept)
	paymentsv1connect.RegisterPaymentServiceHandler(server, &service{charge: func(context.Context, *paymentsv1.ChargeRequest, adaptertest.Metadata) (*paymentsv1.ChargeResponse, error) {
		return nil, &adaptertest.RPCError{Code: adaptertest.CodeUnavailable, Message: "down"}
	}})
	for p, client := range retryingClients(t, server) {
		before := len(log.all())
		_, err := client.Charge(t.Context(), adaptertest.Request("acct"))
		assert.Equal(t, connect.CodeUnavailable, connect.CodeOf(err), p)
		assert.Len(t, log.all(), before+1, "%s: one attempt", p)
	}
}

func TestClientInterceptorRetriesStoreUnavailableWithinBudget(t *testing.T) {
	t.Parallel()
	log := newKeyLog()
	server := connect.NewServer(log.intercept, connectv2.NewServerInterceptor(downStore{}, quiet))
	paymentsv1connect.RegisterPaymentServiceHandler(server, &service{charge: adaptertest.Charge})
	clients := retryingClients(t, server, idempotency.WithMaxRetries(2))
	for _, p := range v2Adapter.Protocols {
		before := len(log.all())
		_, err := clients[p].Charge(t.Context(), adaptertest.Request("acct"))
		assert.Equal(t, connect.CodeUnavailable, connect.CodeOf(err), p)
		keys := log.all()[before:]
		require.Len(t, keys, 3, "%s: the first attempt and two retries", p)
		assert.Equal(t, keys[0], keys[2], "%s: one key for every attempt", p)
	}
}

// flakyTransport fails to open the first stream, as a connection that
// cannot be made, before any server sees the call.
type flakyTransport struct {
	connect.Transport
	mu     sync.Mutex
	failed bool
}

func (f *flakyTransport) NewClientStream(ctx context.Context, spec connect.Spec) (connect.ClientStream, error) {
	f.mu.Lock()
	fail := !f.failed
	f.failed = true
	f.mu.Unlock()
	if fail {
		return nil, connect.NewError(connect.CodeUnavailable, "dial failed").WithCause(errors.New("connection refused"))
	}
	return f.Transport.NewClientStream(ctx, spec)
}

func TestClientInterceptorRetriesTransportFailures(t *testing.T) {
	t.Parallel()
	log := newKeyLog()
	server := connect.NewServer(log.intercept, connectv2.NewServerInterceptor(memory.New(), quiet))
	paymentsv1connect.RegisterPaymentServiceHandler(server, &service{charge: adaptertest.Charge})
	client := paymentsv1connect.NewPaymentServiceClient(connect.NewClient(
		&flakyTransport{Transport: connectinprocess.New(server)}, connectv2.NewClientInterceptor(fast)))
	ctx, info := connect.NewClientContext(t.Context())
	res, err := client.Charge(ctx, adaptertest.Request("acct"))
	require.NoError(t, err)
	assert.Equal(t, "succeeded", res.GetStatus())
	assert.Len(t, log.all(), 1, "the server saw the retry only")
	assert.Equal(t, "ch_acct", info.ResponseHeader().Get("X-Charge-Id"), "the caller's call info has the answer's headers")
}

func TestClientInterceptorPassesSafeProceduresThrough(t *testing.T) {
	t.Parallel()
	log := newKeyLog()
	server := connect.NewServer(log.intercept)
	paymentsv1connect.RegisterPaymentServiceHandler(server, &service{})
	for p, client := range retryingClients(t, server) {
		before := len(log.all())
		_, err := client.GetCharge(t.Context(), &paymentsv1.GetChargeRequest{ChargeId: "ch_1"})
		assert.Equal(t, connect.CodeUnimplemented, connect.CodeOf(err), p)
		keys := log.all()[before:]
		require.Len(t, keys, 1, p)
		assert.Empty(t, keys[0], "%s: no key on a NO_SIDE_EFFECTS procedure", p)
	}
}

// downStore is a store that is always unavailable.
type downStore struct{}

var errStoreDown = errors.New("store down")

func (downStore) Claim(context.Context, string, string, time.Duration) (idempotency.ClaimResult, error) {
	return idempotency.ClaimResult{}, errStoreDown
}

func (downStore) Complete(context.Context, string, string, []byte, time.Duration) error {
	return errStoreDown
}
func (downStore) Release(context.Context, string, string) error { return errStoreDown }
func (downStore) Renew(context.Context, string, string, time.Duration) error {
	return errStoreDown
}
