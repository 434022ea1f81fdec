package hostile

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/httpmw"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1/paymentsv1connect"
	"github.com/idemkey/idempotency/internal/redistest"
	"github.com/idemkey/idempotency/store/redisstore"
)

// quiet drops what the library logs, for tests that do not read it.
var quiet = slog.New(slog.DiscardHandler)

// eventTimeout bounds every wait for something a test caused to happen.
const eventTimeout = 10 * time.Second

// newRedisStore returns a client of the shared test Redis, a key prefix of
// the test's own (its keys are deleted when the test ends) and a store
// under that prefix.
func newRedisStore(t *testing.T, logger *slog.Logger) (*redis.Client, string, *redisstore.Store) {
	t.Helper()
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	s := redisstore.New(c, redisstore.WithPrefix(prefix), redisstore.WithLogger(logger))
	t.Cleanup(func() { _ = s.Close() })
	return c, prefix, s
}

// scanKeys returns the Redis keys under prefix.
func scanKeys(t *testing.T, c *redis.Client, prefix string) []string {
	t.Helper()
	var keys []string
	iter := c.Scan(t.Context(), 0, prefix+"*", 100).Iterator()
	for iter.Next(t.Context()) {
		keys = append(keys, iter.Val())
	}
	require.NoError(t, iter.Err())
	slices.Sort(keys)
	return keys
}

// spyStore passes every call to its store, counts them, remembers the
// storage keys and records it was handed, and signals each end of a claim.
type spyStore struct {
	idempotency.Store

	calls atomic.Int64
	// ended receives, without blocking, after each Complete and Release.
	ended chan struct{}

	mu      sync.Mutex
	keys    []string
	records [][]byte
}

func newSpy(s idempotency.Store) *spyStore {
	return &spyStore{Store: s, ended: make(chan struct{}, 16)}
}

func (s *spyStore) saw(key string, record []byte) {
	s.calls.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys = append(s.keys, key)
	if record != nil {
		s.records = append(s.records, slices.Clone(record))
	}
}

func (s *spyStore) Claim(ctx context.Context, key, token string, lease time.Duration) (idempotency.ClaimResult, error) {
	res, err := s.Store.Claim(ctx, key, token, lease)
	s.saw(key, res.Record)
	return res, err
}

func (s *spyStore) Complete(ctx context.Context, key, token string, record []byte, expiry time.Duration) error {
	s.saw(key, record)
	defer notify(s.ended)
	return s.Store.Complete(ctx, key, token, record, expiry)
}

func (s *spyStore) Release(ctx context.Context, key, token string) error {
	s.saw(key, nil)
	defer notify(s.ended)
	return s.Store.Release(ctx, key, token)
}

func (s *spyStore) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	s.saw(key, nil)
	return s.Store.Renew(ctx, key, token, lease)
}

// seen returns the storage keys and records the store was handed.
func (s *spyStore) seen() (keys []string, records [][]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.keys), slices.Clone(s.records)
}

// waitEnded waits for a claim to be completed or released.
func (s *spyStore) waitEnded(t *testing.T) {
	t.Helper()
	select {
	case <-s.ended:
	case <-time.After(eventTimeout):
		t.Fatal("the claim was neither completed nor released")
	}
}

// notify signals ch without blocking.
func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// startHTTP serves h behind the middleware over store. It logs nowhere
// unless opts set a logger.
func startHTTP(t *testing.T, store idempotency.Store, h http.Handler, opts ...idempotency.Option) *httptest.Server {
	t.Helper()
	opts = append([]idempotency.Option{idempotency.WithLogger(quiet)}, opts...)
	srv := httptest.NewServer(httpmw.New(store, opts...)(h))
	t.Cleanup(srv.Close)
	return srv
}

// httpReply is what an HTTP client received.
type httpReply struct {
	status int
	header http.Header
	body   []byte
}

// sendHTTP sends a request with the given key header values (none when
// keys is nil) and extra headers, and reads the whole answer.
func sendHTTP(ctx context.Context, srv *httptest.Server, method, path string, keys []string, header http.Header, body io.Reader) (*httpReply, error) {
	req, err := http.NewRequestWithContext(ctx, method, srv.URL+path, body)
	if err != nil {
		return nil, err
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	req.Header.Set("Content-Type", "application/json")
	if keys != nil {
		req.Header[idempotency.DefaultIdempotencyHeader] = keys
	}
	// The transport must hand the body over exactly as it came, without
	// decoding gzip itself.
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	res, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return nil, err
	}
	return &httpReply{status: res.StatusCode, header: res.Header, body: b}, nil
}

// payments is a pluggable PaymentService: each RPC runs its function.
type payments struct {
	paymentsv1connect.UnimplementedPaymentServiceHandler

	charge    func(context.Context, *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error)
	getCharge func(context.Context, *connect.Request[paymentsv1.GetChargeRequest]) (*connect.Response[paymentsv1.GetChargeResponse], error)
}

func (p *payments) Charge(ctx context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
	return p.charge(ctx, req)
}

func (p *payments) GetCharge(ctx context.Context, req *connect.Request[paymentsv1.GetChargeRequest]) (*connect.Response[paymentsv1.GetChargeResponse], error) {
	if p.getCharge == nil {
		return p.UnimplementedPaymentServiceHandler.GetCharge(ctx, req)
	}
	return p.getCharge(ctx, req)
}

// startConnect serves svc over HTTP/2 with TLS, with the interceptor over
// store (logging nowhere unless opts set a logger), and returns a function
// that makes clients for it.
func startConnect(t *testing.T, store idempotency.Store, svc *payments, opts ...idempotency.Option) func(...connect.ClientOption) paymentsv1connect.PaymentServiceClient {
	t.Helper()
	opts = append([]idempotency.Option{idempotency.WithLogger(quiet)}, opts...)
	mux := http.NewServeMux()
	mux.Handle(paymentsv1connect.NewPaymentServiceHandler(svc,
		connect.WithInterceptors(idempotency.NewInterceptor(store, opts...))))
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return func(copts ...connect.ClientOption) paymentsv1connect.PaymentServiceClient {
		return paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL, copts...)
	}
}

// chargeRequest returns a Charge request with the given key header values
// (none when keys is nil).
func chargeRequest(keys []string, amount int64) *connect.Request[paymentsv1.ChargeRequest] {
	req := connect.NewRequest(&paymentsv1.ChargeRequest{AccountId: "acct_1", AmountCents: amount, Currency: "EUR"})
	if keys != nil {
		req.Header()[idempotency.DefaultIdempotencyHeader] = keys
	}
	return req
}

// connectError returns err as a *connect.Error, or fails the test.
func connectError(t *testing.T, err error) *connect.Error {
	t.Helper()
	var ce *connect.Error
	require.ErrorAs(t, err, &ce)
	return ce
}
