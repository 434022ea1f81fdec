package hostile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/store/memory"
)

const tenantHeader = "X-Tenant"

func tenantScope(_ context.Context, h http.Header) string { return h.Get(tenantHeader) }

// TestScopeIsolatesTenants sends one key from two tenants. With a scope
// function (SPEC §2.5), tenant B's request runs on its own and B never
// gets A's response; each tenant's retry replays its own. Without one, B
// gets A's response: the risk the README warns about, shown here so that
// the scoped case is known to test something.
func TestScopeIsolatesTenants(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		opts      []idempotency.Option
		wantRunsB bool // tenant B's request runs the handler
	}{
		{name: "with a scope", opts: []idempotency.Option{idempotency.WithKeyScope(tenantScope)}, wantRunsB: true},
		{name: "without a scope", wantRunsB: false},
	}
	for _, tt := range tests {
		t.Run(tt.name+"/httpmw", func(t *testing.T) {
			t.Parallel()
			var runs atomic.Int32
			srv := startHTTP(t, memory.New(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n := runs.Add(1)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusCreated)
				fmt.Fprintf(w, `{"tenant":%q,"run":%d}`, r.Header.Get(tenantHeader), n)
			}), tt.opts...)
			send := func(tenant string) *httpReply {
				res, err := sendHTTP(t.Context(), srv, http.MethodPost, "/charges", []string{"shared-key"},
					http.Header{tenantHeader: {tenant}}, strings.NewReader(`{"amount":100}`))
				require.NoError(t, err)
				require.Equal(t, http.StatusCreated, res.status, "body %q", res.body)
				return res
			}
			a := send("A")
			b := send("B")
			aRetry, bRetry := send("A"), send("B")

			assert.JSONEq(t, `{"tenant":"A","run":1}`, string(a.body))
			assert.Equal(t, a.body, aRetry.body, "tenant A's retry")
			if !tt.wantRunsB {
				assert.Equal(t, a.body, b.body, "without a scope, B replays A's response")
				assert.Equal(t, int32(1), runs.Load(), "handler runs")
				return
			}
			assert.JSONEq(t, `{"tenant":"B","run":2}`, string(b.body), "tenant B must run its own request")
			assert.Empty(t, b.header.Get(idempotency.DefaultReplayHeader), "tenant B's first request is no replay")
			assert.Equal(t, b.body, bRetry.body, "tenant B's retry")
			assert.Equal(t, "true", bRetry.header.Get(idempotency.DefaultReplayHeader))
			assert.Equal(t, int32(2), runs.Load(), "handler runs")
		})
		t.Run(tt.name+"/interceptor", func(t *testing.T) {
			t.Parallel()
			var runs atomic.Int32
			newClient := startConnect(t, memory.New(), &payments{
				charge: func(_ context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
					n := runs.Add(1)
					return connect.NewResponse(&paymentsv1.ChargeResponse{
						ChargeId: req.Header().Get(tenantHeader) + "-" + strconv.Itoa(int(n)),
					}), nil
				},
			}, tt.opts...)
			client := newClient()
			send := func(tenant string) string {
				req := chargeRequest([]string{"shared-key"}, 100)
				req.Header().Set(tenantHeader, tenant)
				res, err := client.Charge(t.Context(), req)
				require.NoError(t, err)
				return res.Msg.GetChargeId()
			}
			a := send("A")
			b := send("B")
			aRetry, bRetry := send("A"), send("B")

			assert.Equal(t, "A-1", a)
			assert.Equal(t, a, aRetry, "tenant A's retry")
			if !tt.wantRunsB {
				assert.Equal(t, a, b, "without a scope, B replays A's response")
				assert.Equal(t, int32(1), runs.Load(), "handler runs")
				return
			}
			assert.Equal(t, "B-2", b, "tenant B must run its own request")
			assert.Equal(t, b, bRetry, "tenant B's retry")
			assert.Equal(t, int32(2), runs.Load(), "handler runs")
		})
	}
}

// credentials are the header values that must never be stored or replayed.
var credentials = []string{"session=cookie-secret-1", "Bearer auth-secret-2", "Basic proxy-secret-3"}

// assertNoCredentials fails the test if any credential is in b.
func assertNoCredentials(t *testing.T, what string, b []byte) {
	t.Helper()
	for _, c := range credentials {
		assert.NotContains(t, string(b), c, "%s holds a credential", what)
	}
}

// storedValues returns every value under prefix.
func storedValues(t *testing.T, c *redis.Client, prefix string) [][]byte {
	t.Helper()
	var values [][]byte
	for _, k := range scanKeys(t, c, prefix) {
		v, err := c.Get(t.Context(), k).Bytes()
		require.NoError(t, err)
		values = append(values, v)
	}
	return values
}

// TestCredentialsNeverReplayedHTTP allowlists Set-Cookie and the
// authorization headers: the client of the first request gets them from
// its handler, but they are not stored, and a replay, even of a record
// that someone else wrote with them, never carries them (SPEC §4.3).
func TestCredentialsNeverReplayedHTTP(t *testing.T) {
	t.Parallel()
	c, prefix, store := newRedisStore(t, quiet)
	srv := startHTTP(t, store, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Set-Cookie", credentials[0])
		w.Header().Set("Authorization", credentials[1])
		w.Header().Set("Proxy-Authorization", credentials[2])
		w.Header().Set("X-Trace", "trace-1")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"id":1}`)
	}), idempotency.WithStoredHeaders("Content-Type", "X-Trace", "Set-Cookie", "Authorization", "Proxy-Authorization"))
	send := func() *httpReply {
		res, err := sendHTTP(t.Context(), srv, http.MethodPost, "/charges", []string{"key-credentials"}, nil, strings.NewReader(`{}`))
		require.NoError(t, err)
		require.Equal(t, http.StatusCreated, res.status)
		return res
	}
	first := send()
	assert.Equal(t, credentials[0], first.header.Get("Set-Cookie"), "the first client gets its handler's answer")

	values := storedValues(t, c, prefix)
	require.Len(t, values, 1)
	assertNoCredentials(t, "the stored record", values[0])

	retry := send()
	require.Equal(t, "true", retry.header.Get(idempotency.DefaultReplayHeader))
	assert.Equal(t, "trace-1", retry.header.Get("X-Trace"), "an allowlisted header is replayed")
	for _, h := range []string{"Set-Cookie", "Authorization", "Proxy-Authorization"} {
		assert.Empty(t, retry.header.Values(h), "replayed %s", h)
	}

	// A record written by another writer, with credentials in it.
	keys := scanKeys(t, c, prefix)
	var rec map[string]any
	require.NoError(t, json.Unmarshal(values[0][1:], &rec))
	rec["h"] = map[string][]string{
		"Content-Type": {"application/json"}, "X-Trace": {"trace-2"},
		"Set-Cookie": {credentials[0]}, "Authorization": {credentials[1]}, "Proxy-Authorization": {credentials[2]},
	}
	smuggled, err := json.Marshal(rec)
	require.NoError(t, err)
	require.NoError(t, c.SetArgs(t.Context(), keys[0], append([]byte("d"), smuggled...), redis.SetArgs{KeepTTL: true}).Err())
	retry = send()
	require.Equal(t, "true", retry.header.Get(idempotency.DefaultReplayHeader))
	assert.Equal(t, "trace-2", retry.header.Get("X-Trace"), "the rewritten record was replayed")
	for _, h := range []string{"Set-Cookie", "Authorization", "Proxy-Authorization"} {
		assert.Empty(t, retry.header.Values(h), "replayed %s from a foreign record", h)
	}
}

// TestCredentialsNeverStoredConnect has a handler set Set-Cookie and
// authorization headers on its response, its trailers, its call info and
// its error's metadata: none is stored nor replayed, whatever the
// allowlist of the middleware says (SPEC §4.3, §4.4).
func TestCredentialsNeverStoredConnect(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		failing bool // the handler returns an error
	}{
		{name: "response"},
		{name: "error", failing: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, prefix, store := newRedisStore(t, quiet)
			newClient := startConnect(t, store, &payments{
				charge: func(ctx context.Context, _ *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
					if info, ok := connect.CallInfoForHandlerContext(ctx); ok {
						info.ResponseHeader().Set("Set-Cookie", credentials[0])
						info.ResponseTrailer().Set("Authorization", credentials[1])
					}
					if tt.failing {
						e := connect.NewError(connect.CodeFailedPrecondition, errors.New("declined"))
						e.Meta().Set("Set-Cookie", credentials[0])
						e.Meta().Set("Authorization", credentials[1])
						e.Meta().Set("X-Trace", "trace-1")
						return nil, e
					}
					res := connect.NewResponse(&paymentsv1.ChargeResponse{ChargeId: "ch_1"})
					res.Header().Set("Authorization", credentials[1])
					res.Header().Set("Proxy-Authorization", credentials[2])
					res.Header().Set("X-Trace", "trace-1")
					res.Trailer().Set("Set-Cookie", credentials[0])
					return res, nil
				},
			}, idempotency.WithStoredHeaders("X-Trace", "Set-Cookie", "Authorization", "Proxy-Authorization"))
			client := newClient()

			type answer struct{ header, trailer http.Header }
			send := func() answer {
				res, err := client.Charge(t.Context(), chargeRequest([]string{"key-credentials"}, 100))
				if tt.failing {
					ce := connectError(t, err)
					require.Equal(t, connect.CodeFailedPrecondition, ce.Code())
					return answer{header: ce.Meta()}
				}
				require.NoError(t, err)
				return answer{header: res.Header(), trailer: res.Trailer()}
			}
			first := send()
			assert.Equal(t, credentials[0], first.header.Get("Set-Cookie"), "the first client gets its handler's answer")

			values := storedValues(t, c, prefix)
			require.Len(t, values, 1)
			assertNoCredentials(t, "the stored record", values[0])
			assert.Contains(t, string(values[0]), "trace-1", "the stored record holds the other headers")

			retry := send()
			require.Equal(t, "true", retry.header.Get(idempotency.DefaultReplayHeader))
			assert.Equal(t, "trace-1", retry.header.Get("X-Trace"))
			for _, h := range []string{"Set-Cookie", "Authorization", "Proxy-Authorization"} {
				assert.Empty(t, retry.header.Values(h), "replayed header %s", h)
				assert.Empty(t, retry.trailer.Values(h), "replayed trailer %s", h)
			}
		})
	}
}

// TestStorageKeysNeverHoldRawKey runs requests through both adapters on a
// real Redis and on a memory store, stored, rejected and released ones,
// and checks that the raw key is in no storage key and no stored value
// (SPEC §2.4), and that equal keys on different routes or scopes get
// different storage keys.
func TestStorageKeysNeverHoldRawKey(t *testing.T) {
	t.Parallel()
	const (
		rawHTTP    = "raw-http-key-5f0e8c2a"
		rawConnect = "raw-connect-key-91b34d7e"
	)
	exercise := func(t *testing.T, store idempotency.Store) {
		t.Helper()
		var runs atomic.Int32
		srv := startHTTP(t, store, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n := runs.Add(1)
			w.Header().Set("Content-Type", "application/json")
			if r.URL.Path == "/text" {
				w.Header().Set("Content-Type", "text/plain")
			}
			_, _ = fmt.Fprintf(w, `{"run":%d}`, n)
		}), idempotency.WithKeyScope(tenantScope))
		for _, r := range []struct{ path, tenant, body string }{
			{"/charges", "A", `{"amount":1}`},
			{"/charges", "A", `{"amount":2}`}, // a mismatch
			{"/charges", "B", `{"amount":1}`},
			{"/refunds", "A", `{"amount":1}`},
			{"/text", "A", `{"amount":1}`}, // not stored: released
		} {
			_, err := sendHTTP(t.Context(), srv, http.MethodPost, r.path, []string{rawHTTP},
				http.Header{tenantHeader: {r.tenant}}, strings.NewReader(r.body))
			require.NoError(t, err)
		}
		newClient := startConnect(t, store, &payments{
			charge: func(context.Context, *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
				return connect.NewResponse(&paymentsv1.ChargeResponse{ChargeId: "ch_1"}), nil
			},
		})
		client := newClient()
		for _, amount := range []int64{1, 1, 2} {
			_, _ = client.Charge(t.Context(), chargeRequest([]string{rawConnect}, amount))
		}
	}
	checkKeys := func(t *testing.T, keys []string, values [][]byte) {
		t.Helper()
		require.NotEmpty(t, keys)
		require.NotEmpty(t, values)
		for _, raw := range []string{rawHTTP, rawConnect} {
			for _, k := range keys {
				assert.NotContains(t, k, raw, "storage key")
			}
			for _, v := range values {
				assert.NotContains(t, string(v), raw, "stored value")
			}
		}
	}

	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		c, prefix, store := newRedisStore(t, quiet)
		exercise(t, store)
		keys := scanKeys(t, c, prefix)
		// /charges for A and for B, /refunds for A, the Charge procedure.
		assert.Len(t, keys, 4, "one storage key per scope, route and key")
		checkKeys(t, keys, storedValues(t, c, prefix))
	})
	t.Run("memory", func(t *testing.T) {
		t.Parallel()
		spy := newSpy(memory.New())
		exercise(t, spy)
		keys, records := spy.seen()
		distinct := map[string]bool{}
		for _, k := range keys {
			distinct[k] = true
		}
		// /text is claimed too, then released.
		assert.Len(t, distinct, 5, "one storage key per scope, route and key")
		checkKeys(t, keys, records)
	})
}

// syncBuffer collects log output from many goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// faultStore plays a failing store over a memory store.
type faultStore struct {
	idempotency.Store

	claimErr    error
	record      []byte // Claim answers this as a completed record
	completeErr error
	// loseLease makes Renew and Complete find the claim lost; renewed
	// receives when a renewal found it so.
	loseLease bool
	renewed   chan struct{}
}

func (s *faultStore) Claim(ctx context.Context, key, token string, lease time.Duration) (idempotency.ClaimResult, error) {
	switch {
	case s.claimErr != nil:
		return idempotency.ClaimResult{}, s.claimErr
	case s.record != nil:
		return idempotency.ClaimResult{State: idempotency.StateCompleted, Record: s.record}, nil
	}
	return s.Store.Claim(ctx, key, token, lease)
}

func (s *faultStore) Complete(ctx context.Context, key, token string, record []byte, expiry time.Duration) error {
	switch {
	case s.loseLease:
		return idempotency.ErrNotHeld
	case s.completeErr != nil:
		return s.completeErr
	}
	return s.Store.Complete(ctx, key, token, record, expiry)
}

func (s *faultStore) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	if s.loseLease {
		notify(s.renewed)
		return idempotency.ErrNotHeld
	}
	return s.Store.Renew(ctx, key, token, lease)
}

// TestLogsNeverPrintRawKeys runs both adapters, logging at debug level,
// through every path that logs: store failures failing closed and open,
// a lease lost while the handler runs, a failure to store, a corrupt or
// unreplayable record (in a real Redis too), a payload mismatch, a request
// in flight and invalid keys. No log line may hold a raw key (SPEC §2.4).
func TestLogsNeverPrintRawKeys(t *testing.T) { //nolint:tparallel // the "scenarios" group must end before the logs are read
	t.Parallel()
	const marker = "SECRETKEY"
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	errDown := errors.New("store down")
	// What an interceptor record of an unknown message looks like.
	unreplayable := []byte(`{"v":1,"s":200,"m":"no.such.Message","b":"e30="}`)

	scenarios := []struct {
		name  string
		store func() idempotency.Store
		opts  []idempotency.Option
		// keys are the key header values of each request, in order.
		keys        [][]string
		bodies      []string // request bodies (amounts for Connect), one per request
		waitRenewal bool     // the handler waits until a renewal found the claim lost
		holdFirst   bool     // the first request holds its claim while the second is sent
	}{
		{name: "store down, fail closed", store: func() idempotency.Store { return &faultStore{Store: memory.New(), claimErr: errDown} }},
		{name: "store down, fail open", store: func() idempotency.Store { return &faultStore{Store: memory.New(), claimErr: errDown} },
			opts: []idempotency.Option{idempotency.WithFailOpen(true)}},
		{name: "lease lost", store: func() idempotency.Store {
			return &faultStore{Store: memory.New(), loseLease: true, renewed: make(chan struct{}, 1)}
		}, opts: []idempotency.Option{idempotency.WithLease(30 * time.Millisecond)}, waitRenewal: true},
		{name: "storing fails", store: func() idempotency.Store { return &faultStore{Store: memory.New(), completeErr: errDown} }},
		{name: "corrupt record", store: func() idempotency.Store { return &faultStore{Store: memory.New(), record: []byte("garbage")} }},
		{name: "unreplayable record", store: func() idempotency.Store { return &faultStore{Store: memory.New(), record: unreplayable} }},
		{name: "payload mismatch", bodies: []string{"1", "2"}},
		{name: "in flight", holdFirst: true},
		{name: "invalid keys", keys: [][]string{{marker + "\tx"}, {marker + "-a", marker + "-b"}, {strings.Repeat(marker, 30)}}},
	}
	t.Run("scenarios", func(t *testing.T) {
		for i, sc := range scenarios {
			for _, adapter := range []string{"httpmw", "interceptor"} {
				t.Run(sc.name+"/"+adapter, func(t *testing.T) {
					t.Parallel()
					var store idempotency.Store = memory.New()
					if sc.store != nil {
						store = sc.store()
					}
					opts := append([]idempotency.Option{idempotency.WithLogger(logger)}, sc.opts...)
					keys := sc.keys
					if keys == nil {
						key := marker + "-" + adapter + "-" + strconv.Itoa(i)
						keys = [][]string{{key}, {key}}
					}
					bodies := sc.bodies
					if bodies == nil {
						bodies = []string{"1", "1"}
					}
					started, release := make(chan struct{}, 1), make(chan struct{})
					var runs atomic.Int32
					handle := func(ctx context.Context) {
						if runs.Add(1) == 1 && sc.holdFirst {
							notify(started)
							<-release
						}
						if sc.waitRenewal {
							select {
							case <-store.(*faultStore).renewed:
							case <-ctx.Done():
							}
						}
					}
					var send func(ctx context.Context, keys []string, body string) error
					if adapter == "httpmw" {
						srv := startHTTP(t, store, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
							handle(r.Context())
							w.Header().Set("Content-Type", "application/json")
							_, _ = io.WriteString(w, `{"ok":true}`)
						}), opts...)
						send = func(ctx context.Context, keys []string, body string) error {
							_, err := sendHTTP(ctx, srv, http.MethodPost, "/charges", keys, nil, strings.NewReader(`{"amount":`+body+`}`))
							return err
						}
					} else {
						client := startConnect(t, store, &payments{
							charge: func(ctx context.Context, _ *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
								handle(ctx)
								return connect.NewResponse(&paymentsv1.ChargeResponse{ChargeId: "ch_1"}), nil
							},
						}, opts...)()
						send = func(ctx context.Context, keys []string, body string) error {
							amount, _ := strconv.ParseInt(body, 10, 64)
							_, err := client.Charge(ctx, chargeRequest(keys, amount))
							var ce *connect.Error
							if errors.As(err, &ce) {
								return nil // an answer, as an HTTP error status is
							}
							return err
						}
					}
					if sc.holdFirst {
						first := make(chan error, 1)
						go func() { first <- send(t.Context(), keys[0], bodies[0]) }()
						select {
						case <-started:
						case <-time.After(eventTimeout):
							t.Fatal("the first request did not start")
						}
						require.NoError(t, send(t.Context(), keys[1], bodies[1]))
						close(release)
						require.NoError(t, <-first)
						return
					}
					for i, k := range keys {
						require.NoError(t, send(t.Context(), k, bodies[min(i, len(bodies)-1)]))
					}
				})
			}
		}
		t.Run("corrupt record in Redis", func(t *testing.T) {
			t.Parallel()
			c, prefix, store := newRedisStore(t, logger)
			srv := startHTTP(t, store, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = io.WriteString(w, `{"ok":true}`)
			}), idempotency.WithLogger(logger))
			key := []string{marker + "-redis"}
			_, err := sendHTTP(t.Context(), srv, http.MethodPost, "/charges", key, nil, strings.NewReader(`{}`))
			require.NoError(t, err)
			keys := scanKeys(t, c, prefix)
			require.Len(t, keys, 1)
			require.NoError(t, c.SetArgs(t.Context(), keys[0], "d{garbage", redis.SetArgs{KeepTTL: true}).Err())
			res, err := sendHTTP(t.Context(), srv, http.MethodPost, "/charges", key, nil, strings.NewReader(`{}`))
			require.NoError(t, err)
			assert.Equal(t, http.StatusServiceUnavailable, res.status)
		})
	})

	out := logs.String()
	// The paths above did log: the check below is not vacuous.
	for _, msg := range []string{
		"idempotency: store unavailable",
		"running the handler unprotected",
		"claim lost while the handler runs",
		"claim lost before the response was stored",
		"storing the response failed",
		"stored record cannot be decoded",
		"stored response cannot be replayed",
	} {
		assert.Contains(t, out, msg, "a log line the scenarios must produce")
	}
	assert.NotContains(t, out, marker, "a raw key was logged")
	if t.Failed() {
		t.Logf("logs:\n%s", out)
	}
}
