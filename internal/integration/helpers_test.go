package integration

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/httpmw"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1/paymentsv1connect"
	"github.com/idemkey/idempotency/store/redisstore"
)

const (
	// startTimeout bounds how long a test waits for a handler to start.
	startTimeout = 10 * time.Second
	// storeTimeout is the store timeout of instances whose test is not
	// about timeouts: generous, so that a machine under load slows the
	// tests down rather than failing their requests with 503.
	storeTimeout = 10 * time.Second

	keyHeader    = "Idempotency-Key"
	replayHeader = "Idempotent-Replayed"
	chargePath   = "/charges"
	chargeBody   = `{"account":"acct_1","amount_cents":1234,"currency":"EUR"}`
)

// newKey returns a fresh idempotency key.
func newKey() string { return uuid.NewString() }

// testLogger logs the library's warnings and errors to the test's output,
// which shows only when the test fails or runs with -v.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// newStore returns a Redis store on c under prefix, closed when the test
// ends (after the servers that use it, which are started later).
func newStore(t testing.TB, c redis.UniversalClient, prefix string, opts ...redisstore.Option) *redisstore.Store {
	t.Helper()
	opts = append([]redisstore.Option{redisstore.WithPrefix(prefix), redisstore.WithLogger(testLogger(t))}, opts...)
	s := redisstore.New(c, opts...)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s
}

// httpInstance is one replica of a plain net/http service: the middleware
// over a store, in front of a handler, on a loopback server.
type httpInstance struct {
	url    string
	client *http.Client
}

// startHTTP serves h behind the middleware over store until the test ends.
// Options given override the test defaults: a logger to the test's output
// and a store timeout of [storeTimeout].
func startHTTP(t testing.TB, store idempotency.Store, h http.HandlerFunc, opts ...idempotency.Option) *httpInstance {
	t.Helper()
	opts = append([]idempotency.Option{idempotency.WithLogger(testLogger(t)), idempotency.WithStoreTimeout(storeTimeout)}, opts...)
	srv := httptest.NewServer(httpmw.New(store, opts...)(h))
	t.Cleanup(srv.Close)
	return &httpInstance{url: srv.URL, client: srv.Client()}
}

// answer is what a client received.
type answer struct {
	status int
	header http.Header
	body   []byte
	at     time.Time // when the whole body had arrived
}

func (a answer) replayed() bool { return a.header.Get(replayHeader) == "true" }

func (a answer) String() string {
	return fmt.Sprintf("%d %s replayed=%t %q", a.status, a.header.Get("Content-Type"), a.replayed(), a.body)
}

// send posts a charge with key (none if empty) to the instance.
func (in *httpInstance) send(ctx context.Context, key, body string) (answer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, in.url+chargePath, strings.NewReader(body))
	if err != nil {
		return answer{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set(keyHeader, key)
	}
	resp, err := in.client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, err
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: b, at: time.Now()}, nil
}

// post is send for the test's own goroutine: a transport failure ends the
// test.
func (in *httpInstance) post(t testing.TB, key string) answer {
	t.Helper()
	a, err := in.send(t.Context(), key, chargeBody)
	require.NoError(t, err)
	return a
}

// writeJSON answers a JSON body with status 200.
func writeJSON(w http.ResponseWriter, body string) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, body)
}

// chargeJSON is a handler's answer: a charge ID unique to the run, so that
// a replay can be told from a second run.
func chargeJSON(by string, run int64) string {
	return `{"charge_id":"ch_` + by + `_` + strconv.FormatInt(run, 10) + `","status":"succeeded","amount_cents":1234}`
}

// assertReplayOf checks that a is a replay of first: same status, same
// Content-Type, the same body byte for byte, and the replay marker.
func assertReplayOf(t testing.TB, first, a answer, msgAndArgs ...any) bool {
	t.Helper()
	ok := assert.Equal(t, first.status, a.status, msgAndArgs...)
	ok = assert.Equal(t, first.header.Get("Content-Type"), a.header.Get("Content-Type"), msgAndArgs...) && ok
	ok = assert.Equal(t, string(first.body), string(a.body), msgAndArgs...) && ok
	return assert.True(t, a.replayed(), msgAndArgs...) && ok
}

// assertExecuted checks that a is a first execution's answer, not a replay.
func assertExecuted(t testing.TB, a answer, msgAndArgs ...any) bool {
	t.Helper()
	ok := assert.Equal(t, http.StatusOK, a.status, msgAndArgs...)
	return assert.False(t, a.replayed(), msgAndArgs...) && ok
}

// assertConflict checks that a is the middleware's in-flight conflict.
func assertConflict(t testing.TB, a answer, msgAndArgs ...any) bool {
	t.Helper()
	ok := assert.Equal(t, http.StatusConflict, a.status, msgAndArgs...)
	ok = assert.Equal(t, "1", a.header.Get("Retry-After"), msgAndArgs...) && ok
	return assert.Equal(t, idempotency.StatusInFlight, a.header.Get(idempotency.StatusHeader), msgAndArgs...) && ok
}

// chargeService is a PaymentService whose Charge runs a function.
type chargeService struct {
	paymentsv1connect.UnimplementedPaymentServiceHandler
	charge func(context.Context, *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error)
}

func (s *chargeService) Charge(ctx context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
	return s.charge(ctx, req)
}

// startConnect serves charge behind the interceptor over store, on HTTP/2
// with TLS, until the test ends, and returns a client of it. Options are as
// for [startHTTP].
func startConnect(t testing.TB, store idempotency.Store,
	charge func(context.Context, *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error),
	opts ...idempotency.Option,
) paymentsv1connect.PaymentServiceClient {
	t.Helper()
	opts = append([]idempotency.Option{idempotency.WithLogger(testLogger(t)), idempotency.WithStoreTimeout(storeTimeout)}, opts...)
	mux := http.NewServeMux()
	mux.Handle(paymentsv1connect.NewPaymentServiceHandler(&chargeService{charge: charge},
		connect.WithInterceptors(idempotency.NewInterceptor(store, opts...))))
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL)
}

// chargeRequest is the Connect request every test sends, with key.
func chargeRequest(key string) *connect.Request[paymentsv1.ChargeRequest] {
	req := connect.NewRequest(&paymentsv1.ChargeRequest{AccountId: "acct_1", AmountCents: 1234, Currency: "EUR"})
	req.Header().Set(keyHeader, key)
	return req
}

// chargeResponse is a Charge handler's answer, unique to the run.
func chargeResponse(by string, run int64) *connect.Response[paymentsv1.ChargeResponse] {
	id := "ch_" + by + "_" + strconv.FormatInt(run, 10)
	res := connect.NewResponse(&paymentsv1.ChargeResponse{
		ChargeId:    id,
		Status:      "succeeded",
		AmountCents: 1234,
		CreatedAt:   timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)),
	})
	res.Header().Set("X-Charge-Id", id)
	return res
}

// observedStore reports the outcome of each Complete and Release that the
// engine sends to the store it wraps. It hides the store's Waiter, so an
// engine over it polls if it waits at all.
type observedStore struct {
	idempotency.Store
	completed chan error
	released  chan error
}

func observe(s idempotency.Store) *observedStore {
	return &observedStore{Store: s, completed: make(chan error, 16), released: make(chan error, 16)}
}

func (s *observedStore) Complete(ctx context.Context, key, token string, record []byte, expiry time.Duration) error {
	err := s.Store.Complete(ctx, key, token, record, expiry)
	s.completed <- err
	return err
}

func (s *observedStore) Release(ctx context.Context, key, token string) error {
	err := s.Store.Release(ctx, key, token)
	s.released <- err
	return err
}

// receive returns the next value from ch, failing the test if none comes
// within d.
func receive[T any](t testing.TB, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		require.FailNow(t, "timed out", "%s did not happen within %v", what, d)
	case <-t.Context().Done():
		require.FailNow(t, "test ended", "while waiting for %s", what)
	}
	var zero T
	return zero
}

// replies is a go-redis hook that reports each command once its reply has
// arrived, so that a test can tell when Redis has seen a command rather
// than when it was sent. Connection set-up and pipelines, which the store
// does not send, are not reported.
type replies struct {
	ch chan string
}

var _ redis.Hook = (*replies)(nil)

func newReplies(c redis.UniversalClient) *replies {
	r := &replies{ch: make(chan string, 1024)}
	c.AddHook(r)
	return r
}

func (r *replies) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *replies) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if !isSetup(cmd.Name()) {
			select {
			case r.ch <- cmd.Name():
			default:
			}
		}
		return err
	}
}

func (r *replies) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// drain forgets the replies reported so far.
func (r *replies) drain() {
	for {
		select {
		case <-r.ch:
		default:
			return
		}
	}
}

// await waits for n more replies, or until ctx ends; it reports whether
// they came.
func (r *replies) await(ctx context.Context, n int) bool {
	for range n {
		select {
		case <-r.ch:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

func isSetup(name string) bool {
	switch strings.ToLower(name) {
	case "hello", "auth", "select", "readonly", "client":
		return true
	}
	return false
}

// redisKeys returns the keys under prefix, from a standalone Redis.
func redisKeys(t testing.TB, c *redis.Client, prefix string) []string {
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

// percentiles returns the median and the worst of ds, which it sorts.
func percentiles(ds []time.Duration) (median, worst time.Duration) {
	slices.Sort(ds)
	return ds[len(ds)/2], ds[len(ds)-1]
}
