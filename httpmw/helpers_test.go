package httpmw_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/httpmw"
	"github.com/idemkey/idempotency/store/memory"
)

// spyStore wraps a store, counts the calls that reach it, and reports on
// ended each Complete and Release that returned.
type spyStore struct {
	idempotency.Store
	claims    atomic.Int32
	completes atomic.Int32
	releases  atomic.Int32
	renews    atomic.Int32
	ended     chan string
}

func newSpy() *spyStore {
	return &spyStore{Store: memory.New(), ended: make(chan string, 128)}
}

func (s *spyStore) calls() int32 {
	return s.claims.Load() + s.completes.Load() + s.releases.Load() + s.renews.Load()
}

func (s *spyStore) Claim(ctx context.Context, key, token string, lease time.Duration) (idempotency.ClaimResult, error) {
	s.claims.Add(1)
	return s.Store.Claim(ctx, key, token, lease)
}

func (s *spyStore) Complete(ctx context.Context, key, token string, record []byte, expiry time.Duration) error {
	s.completes.Add(1)
	err := s.Store.Complete(ctx, key, token, record, expiry)
	s.notify("complete")
	return err
}

func (s *spyStore) Release(ctx context.Context, key, token string) error {
	s.releases.Add(1)
	err := s.Store.Release(ctx, key, token)
	s.notify("release")
	return err
}

func (s *spyStore) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	s.renews.Add(1)
	return s.Store.Renew(ctx, key, token, lease)
}

func (s *spyStore) notify(what string) {
	select {
	case s.ended <- what:
	default: // nobody is listening; the counters still tell
	}
}

// Wait makes the spy an [idempotency.Waiter], as the memory store is.
func (s *spyStore) Wait(ctx context.Context, key string) error {
	return s.Store.(idempotency.Waiter).Wait(ctx, key)
}

// waitEnded waits for the next Complete or Release and returns which it was.
func (s *spyStore) waitEnded(t *testing.T) string {
	t.Helper()
	select {
	case what := <-s.ended:
		return what
	case <-time.After(10 * time.Second):
		require.FailNow(t, "the claim did not end")
		return ""
	}
}

var errStoreDown = errors.New("store down")

// failingStore fails every call, as a store that cannot be reached.
type failingStore struct {
	calls atomic.Int32
}

func (s *failingStore) Claim(context.Context, string, string, time.Duration) (idempotency.ClaimResult, error) {
	s.calls.Add(1)
	return idempotency.ClaimResult{}, errStoreDown
}

func (s *failingStore) Complete(context.Context, string, string, []byte, time.Duration) error {
	s.calls.Add(1)
	return errStoreDown
}

func (s *failingStore) Release(context.Context, string, string) error {
	s.calls.Add(1)
	return errStoreDown
}

func (s *failingStore) Renew(context.Context, string, string, time.Duration) error {
	s.calls.Add(1)
	return errStoreDown
}

// fixedStore answers every claim with the same result: a key held by
// someone else, or a given record, well formed or not.
type fixedStore struct {
	failingStore
	result idempotency.ClaimResult
}

func (s *fixedStore) Claim(context.Context, string, string, time.Duration) (idempotency.ClaimResult, error) {
	s.calls.Add(1)
	return s.result, nil
}

// syncBuffer is a buffer that a logger can write to from any goroutine.
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

func bufferLogger(buf *syncBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// counted wraps a handler and counts its runs.
func counted(runs *atomic.Int32, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		h(w, r)
	}
}

// jsonHandler answers status with a JSON body.
func jsonHandler(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

// guarded returns h behind the middleware on store.
func guarded(store idempotency.Store, h http.Handler, opts ...idempotency.Option) http.Handler {
	return httpmw.New(store, opts...)(h)
}

// request builds a request; a key of "-" means no key header.
func request(ctx context.Context, method, target, key, body string) *http.Request {
	r := httptest.NewRequestWithContext(ctx, method, target, strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	if key != "-" {
		r.Header["Idempotency-Key"] = []string{key}
	}
	return r
}

// serve runs one request through h.
func serve(h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	return rec
}

func post(t *testing.T, h http.Handler, key, body string) *httptest.ResponseRecorder {
	t.Helper()
	return serve(h, request(t.Context(), http.MethodPost, "/payments", key, body))
}

// problemDoc is the RFC 9457 document the middleware answers errors with.
type problemDoc struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

// requireProblem checks that rec is a problem response with the status,
// the Idempotency-Status label and the type fragment given, and returns
// its document.
func requireProblem(t *testing.T, rec *httptest.ResponseRecorder, status int, label, typ string) problemDoc {
	t.Helper()
	require.Equal(t, status, rec.Code, "body: %s", rec.Body)
	assert.Equal(t, "application/problem+json", rec.Header().Get("Content-Type"))
	assert.Equal(t, label, rec.Header().Get(idempotency.StatusHeader))
	assert.Empty(t, rec.Header().Get("Idempotent-Replayed"))
	var doc problemDoc
	dec := json.NewDecoder(rec.Body)
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&doc))
	assert.Equal(t, "https://github.com/idemkey/idempotency#"+typ, doc.Type)
	assert.Equal(t, status, doc.Status)
	assert.NotEmpty(t, doc.Title)
	assert.NotEmpty(t, doc.Detail)
	return doc
}
