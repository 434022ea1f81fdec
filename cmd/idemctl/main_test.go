package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/httpmw"
	"github.com/idemkey/idempotency/internal/pgtest"
	"github.com/idemkey/idempotency/internal/redistest"
	"github.com/idemkey/idempotency/store/pgstore"
	"github.com/idemkey/idempotency/store/redisstore"
	"github.com/idemkey/idempotency/storetest"
)

func TestMain(m *testing.M) { redistest.Main(m, pgtest.TearDown) }

// fixture is a store of the test's own on a shared server (a Redis prefix,
// a PostgreSQL table), and what idemctl needs to reach it.
type fixture struct {
	store idempotency.Store
	// flag and url name the server: "-redis" or "-postgres", and its URL.
	flag, url string
	// env is the variable that can name the server instead of flag.
	env string
	// where names the store on the server: -prefix or -table, and its value.
	where []string
}

// stores are the stores that the end-to-end tests run on.
var stores = []struct {
	name    string
	fixture func(*testing.T) *fixture
}{
	{name: "redis", fixture: redisFixture},
	{name: "postgres", fixture: postgresFixture},
}

// forEachStore runs test in parallel on each of stores.
func forEachStore(t *testing.T, test func(t *testing.T, f *fixture)) {
	t.Helper()
	for _, s := range stores {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			test(t, s.fixture(t))
		})
	}
}

func redisFixture(t *testing.T) *fixture {
	t.Helper()
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	s := redisstore.New(c, redisstore.WithPrefix(prefix))
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	o := c.Options()
	u := url.URL{Scheme: "redis", Host: o.Addr, Path: "/" + strconv.Itoa(o.DB)}
	if o.Password != "" {
		u.User = url.UserPassword(o.Username, o.Password)
	}
	return &fixture{store: s, flag: "-redis", url: u.String(), env: envRedisURL, where: []string{"-prefix", prefix}}
}

func postgresFixture(t *testing.T) *fixture {
	t.Helper()
	pool := pgtest.Pool(t)
	table := pgtest.Name("idemctl")
	require.NoError(t, pgstore.Migrate(t.Context(), pool, pgstore.WithTable(table)))
	s := pgstore.New(pool, pgstore.WithTable(table), pgstore.WithSweepInterval(0))
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return &fixture{store: s, flag: "-postgres", url: pgtest.URL(t), env: envPostgresURL, where: []string{"-table", table}}
}

// idemctl runs the command line args against f's store.
func (f *fixture) idemctl(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	named := append([]string{args[0], f.flag, f.url}, f.where...)
	return idemctl(t, append(named, args[1:]...)...)
}

func idemctl(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	t.Logf("idemctl %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errOut.String())
	return code, out.String(), errOut.String()
}

// inspectJSON runs "idemctl inspect -json" with args and decodes its output.
func (f *fixture) inspectJSON(t *testing.T, wantCode int, args ...string) entryView {
	t.Helper()
	code, out, _ := f.idemctl(t, append([]string{"inspect", "-json"}, args...)...)
	require.Equal(t, wantCode, code, "exit code")
	var v entryView
	require.NoError(t, json.Unmarshal([]byte(out), &v), "JSON output")
	return v
}

// reply is a response, its body read.
type reply struct {
	status int
	header http.Header
	body   string
}

// post sends a POST with key to srv.
func post(t *testing.T, srv *httptest.Server, path, key string) reply {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL+path, strings.NewReader(`{"amount":100}`))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(idempotency.DefaultIdempotencyHeader, key)
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return reply{status: resp.StatusCode, header: resp.Header, body: string(body)}
}

// TestForgetStuckClaim frees a key whose request is stuck in its handler:
// inspect shows the claim with its lease left, forget deletes it, and the
// next request with the key runs the handler.
func TestForgetStuckClaim(t *testing.T) {
	t.Parallel()
	forEachStore(t, testForgetStuckClaim)
}

func testForgetStuckClaim(t *testing.T, f *fixture) {
	var calls atomic.Int32
	started, unblock := make(chan struct{}), make(chan struct{})
	srv := httptest.NewServer(httpmw.New(f.store)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			close(started)
			<-unblock
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"ch_1"}`)
	})))
	t.Cleanup(srv.Close)
	key := rand.Text()
	keyArgs := []string{"-route", "POST /charges", "-key", key}

	// The status of the stuck request, or 0 if it failed.
	stuck := make(chan int, 1)
	go func() {
		status := 0
		defer func() { stuck <- status }()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL+"/charges", strings.NewReader(`{"amount":100}`))
		if err != nil {
			return
		}
		req.Header.Set(idempotency.DefaultIdempotencyHeader, key)
		resp, err := srv.Client().Do(req)
		if err != nil {
			return
		}
		_ = resp.Body.Close()
		status = resp.StatusCode
	}()
	<-started

	code, out, _ := f.idemctl(t, append([]string{"inspect"}, keyArgs...)...)
	require.Equal(t, exitOK, code)
	assert.Contains(t, out, "state:       in flight")
	assert.Contains(t, out, "lease left:")
	assert.NotContains(t, out, key, "the raw key is never printed")
	v := f.inspectJSON(t, exitOK, keyArgs...)
	assert.Equal(t, "in-flight", v.State)
	assert.Equal(t, idempotency.StorageKey("", "POST /charges", key), v.StorageKey)
	assert.Positive(t, v.TTLMillis, "lease left")
	assert.LessOrEqual(t, v.TTLMillis, idempotency.DefaultLease.Milliseconds(), "lease left")

	r := post(t, srv, "/charges", key)
	require.Equal(t, http.StatusConflict, r.status, "in flight before forget")

	code, out, _ = f.idemctl(t, append([]string{"forget"}, keyArgs...)...)
	require.Equal(t, exitOK, code)
	assert.Contains(t, out, "forgot:")
	assert.Contains(t, out, "in flight")

	r = post(t, srv, "/charges", key)
	assert.Equal(t, http.StatusOK, r.status)
	assert.JSONEq(t, `{"id":"ch_1"}`, r.body)
	assert.Empty(t, r.header.Get(idempotency.DefaultReplayHeader), "the handler ran")
	assert.Equal(t, int32(2), calls.Load(), "handler calls")

	// The stuck request ends; its claim is gone, so it cannot overwrite
	// the record of the request that ran after forget.
	close(unblock)
	select {
	case status := <-stuck:
		assert.Equal(t, http.StatusOK, status, "the stuck client still gets its handler's answer")
	case <-time.After(10 * time.Second):
		require.Fail(t, "the stuck request never ended")
	}
	v = f.inspectJSON(t, exitOK, keyArgs...)
	assert.Equal(t, "completed", v.State)
}

// TestForgetRecord lets a completed request run again: inspect shows its
// status and size, forget deletes it, and the next request runs.
func TestForgetRecord(t *testing.T) {
	t.Parallel()
	forEachStore(t, testForgetRecord)
}

func testForgetRecord(t *testing.T, f *fixture) {
	var calls atomic.Int32
	srv := httptest.NewServer(httpmw.New(f.store)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Location", "/orders/"+strconv.Itoa(int(n)))
		_, _ = io.WriteString(w, `{"order":`+strconv.Itoa(int(n))+`}`)
	})))
	t.Cleanup(srv.Close)
	key := rand.Text()
	keyArgs := []string{"-route", "POST /orders", "-key", key}

	first := post(t, srv, "/orders", key)
	require.Equal(t, http.StatusOK, first.status)
	r := post(t, srv, "/orders", key)
	require.Equal(t, "true", r.header.Get(idempotency.DefaultReplayHeader), "the second request is a replay")

	code, out, _ := f.idemctl(t, append([]string{"inspect"}, keyArgs...)...)
	require.Equal(t, exitOK, code)
	for _, want := range []string{"state:       completed", "status:      200", "headers:     Content-Type, Location", "body:        11 bytes", "time left:   23h59m"} {
		assert.Contains(t, out, want)
	}
	v := f.inspectJSON(t, exitOK, keyArgs...)
	assert.Equal(t, "completed", v.State)
	require.NotNil(t, v.Record)
	assert.Equal(t, http.StatusOK, v.Record.Status)
	assert.Equal(t, len(first.body), v.Record.BodySize)
	assert.Equal(t, []string{"Content-Type", "Location"}, v.Record.Headers)
	assert.Greater(t, v.Size, len(first.body), "the record holds the body and more")
	assert.Greater(t, v.TTLMillis, (idempotency.DefaultExpiry - time.Minute).Milliseconds())
	assert.False(t, v.NeverExpires)

	// The storage key names the same record.
	v2 := f.inspectJSON(t, exitOK, "-storage-key", v.StorageKey)
	assert.Equal(t, v.Record, v2.Record)

	code, out, _ = f.idemctl(t, append([]string{"forget", "-json"}, keyArgs...)...)
	require.Equal(t, exitOK, code)
	var fv forgetView
	require.NoError(t, json.Unmarshal([]byte(out), &fv))
	assert.True(t, fv.Forgotten)
	require.NotNil(t, fv.Held)
	require.NotNil(t, fv.Held.Record)
	assert.Equal(t, http.StatusOK, fv.Held.Record.Status)

	r = post(t, srv, "/orders", key)
	assert.Equal(t, http.StatusOK, r.status)
	assert.Empty(t, r.header.Get(idempotency.DefaultReplayHeader), "the handler ran again")
	assert.JSONEq(t, `{"order":2}`, r.body)
	assert.Equal(t, int32(2), calls.Load(), "handler calls")

	// Forgetting twice finds nothing the second time.
	code, _, _ = f.idemctl(t, append([]string{"forget"}, keyArgs...)...)
	require.Equal(t, exitOK, code)
	code, out, _ = f.idemctl(t, append([]string{"forget"}, keyArgs...)...)
	assert.Equal(t, exitAbsent, code)
	assert.Contains(t, out, "nothing to forget")
}

func TestInspectAbsent(t *testing.T) {
	t.Parallel()
	forEachStore(t, testInspectAbsent)
}

func testInspectAbsent(t *testing.T, f *fixture) {
	code, out, _ := f.idemctl(t, "inspect", "-route", "POST /charges", "-key", rand.Text())
	assert.Equal(t, exitAbsent, code)
	assert.Contains(t, out, "state:       nothing")
	v := f.inspectJSON(t, exitAbsent, "-route", "POST /charges", "-key", rand.Text())
	assert.Equal(t, "absent", v.State)
}

// TestInspectKeyForms checks that the key is read as the library reads the
// header: a quoted key and a raw one are the same, the scope counts, and
// with -uuid4 a UUID in another spelling is the same key.
func TestInspectKeyForms(t *testing.T) {
	t.Parallel()
	forEachStore(t, testInspectKeyForms)
}

func testInspectKeyForms(t *testing.T, f *fixture) {
	const route = "/pkg.Service/Method"
	uuid := "6f1d6a2e-7a9b-4c1e-9f3a-2b8c7d6e5f40"
	tests := []struct {
		name       string
		stored     string // the storage key that holds a record
		args       []string
		wantStatus string
	}{
		{name: "raw", stored: idempotency.StorageKey("", route, "abc"), args: []string{"-key", "abc"}, wantStatus: "completed"},
		{name: "quoted", stored: idempotency.StorageKey("", route, "abc2"), args: []string{"-key", `"abc2"`}, wantStatus: "completed"},
		{name: "scoped", stored: idempotency.StorageKey("tenant-1", route, "abc3"), args: []string{"-key", "abc3", "-scope", "tenant-1"}, wantStatus: "completed"},
		{name: "other scope", stored: idempotency.StorageKey("tenant-1", route, "abc4"), args: []string{"-key", "abc4", "-scope", "tenant-2"}, wantStatus: "absent"},
		{name: "uuid4", stored: idempotency.StorageKey("", route, uuid), args: []string{"-key", strings.ToUpper(uuid), "-uuid4"}, wantStatus: "completed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			token := rand.Text()
			_, err := f.store.Claim(t.Context(), tt.stored, token, time.Minute)
			require.NoError(t, err)
			require.NoError(t, f.store.Complete(t.Context(), tt.stored, token, []byte(`{"v":1,"status":200}`), time.Minute))
			wantCode := exitOK
			if tt.wantStatus == "absent" {
				wantCode = exitAbsent
			}
			v := f.inspectJSON(t, wantCode, append([]string{"-route", route}, tt.args...)...)
			assert.Equal(t, tt.wantStatus, v.State)
		})
	}
}

// TestInspectUndecodable shows a record that cannot be decoded rather than
// failing.
func TestInspectUndecodable(t *testing.T) {
	t.Parallel()
	forEachStore(t, testInspectUndecodable)
}

func testInspectUndecodable(t *testing.T, f *fixture) {
	key, token := storetest.Key(), rand.Text()
	sk := idempotency.StorageKey("", "POST /x", key)
	_, err := f.store.Claim(t.Context(), sk, token, time.Minute)
	require.NoError(t, err)
	require.NoError(t, f.store.Complete(t.Context(), sk, token, []byte("not a record \x1b[31m"), 0))
	code, out, _ := f.idemctl(t, "inspect", "-route", "POST /x", "-key", key)
	assert.Equal(t, exitOK, code)
	assert.Contains(t, out, "cannot be decoded")
	assert.Contains(t, out, "never expires")
	assert.NotContains(t, out, "\x1b", "no terminal escapes from the store")
}

func TestStats(t *testing.T) {
	t.Parallel()
	forEachStore(t, testStats)
}

func testStats(t *testing.T, f *fixture) {
	ctx := t.Context()
	const claims, records = 3, 2
	for i := range claims + records {
		key, token := storetest.Key(), rand.Text()
		_, err := f.store.Claim(ctx, key, token, time.Minute)
		require.NoError(t, err)
		if i >= claims {
			require.NoError(t, f.store.Complete(ctx, key, token, []byte("r"), time.Minute))
		}
	}
	code, out, _ := f.idemctl(t, "stats", "-json")
	require.Equal(t, exitOK, code)
	var v statsView
	require.NoError(t, json.Unmarshal([]byte(out), &v))
	assert.Equal(t, int64(claims), v.Claims)
	assert.Equal(t, int64(records), v.Records)

	code, out, _ = f.idemctl(t, "stats")
	require.Equal(t, exitOK, code)
	assert.Contains(t, out, "claims:  3")
	assert.Contains(t, out, "records: 2")
}

// TestStatsCluster counts a store spread over the masters of a Cluster.
func TestStatsCluster(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t)
	c := cl.Client(t)
	prefix := redistest.Prefix(t, c)
	s := redisstore.New(c, redisstore.WithPrefix(prefix))
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	const claims = 30
	for range claims {
		_, err := s.Claim(t.Context(), storetest.Key(), rand.Text(), time.Minute)
		require.NoError(t, err)
	}
	code, out, _ := idemctl(t, "stats", "-json", "-redis-cluster", strings.Join(cl.Addrs(), ","), "-prefix", prefix)
	require.Equal(t, exitOK, code)
	var v statsView
	require.NoError(t, json.Unmarshal([]byte(out), &v))
	assert.Equal(t, int64(claims), v.Claims)
}

func TestUsage(t *testing.T) {
	t.Parallel()
	const (
		redisURL    = "redis://127.0.0.1:1/0" // never dialled: usage fails first
		postgresURL = "postgres://127.0.0.1:1/x"
	)
	tests := []struct {
		name      string
		args      []string
		wantCode  int
		wantError string
	}{
		{name: "no command", args: nil, wantCode: exitUsage, wantError: "Usage:"},
		{name: "unknown command", args: []string{"frob"}, wantCode: exitUsage, wantError: `unknown command "frob"`},
		{name: "help", args: []string{"help"}, wantCode: exitOK},
		{name: "command help", args: []string{"inspect", "-h"}, wantCode: exitOK, wantError: "-storage-key"},
		{name: "unknown flag", args: []string{"stats", "-frob"}, wantCode: exitUsage, wantError: "-frob"},
		{name: "extra argument", args: []string{"stats", "-redis", redisURL, "extra"}, wantCode: exitUsage, wantError: "unexpected arguments"},
		{name: "no key", args: []string{"inspect", "-redis", redisURL}, wantCode: exitUsage, wantError: "-route and -key"},
		{name: "no route", args: []string{"forget", "-redis", redisURL, "-key", "k"}, wantCode: exitUsage, wantError: "-route and -key"},
		{name: "both key forms", args: []string{"inspect", "-redis", redisURL, "-key", "k", "-route", "r", "-storage-key", idempotency.StorageKey("", "r", "k")}, wantCode: exitUsage, wantError: "not both"},
		{name: "key hash", args: []string{"inspect", "-redis", redisURL, "-storage-key", "wmzdDNPVgogV"}, wantCode: exitUsage, wantError: "key_hash"},
		{name: "bad storage key", args: []string{"inspect", "-redis", redisURL, "-storage-key", "a/b"}, wantCode: exitUsage, wantError: "base64url"},
		{name: "invalid key", args: []string{"inspect", "-redis", redisURL, "-route", "r", "-key", "a,b"}, wantCode: exitUsage, wantError: "comma"},
		{name: "not a uuid", args: []string{"inspect", "-redis", redisURL, "-route", "r", "-key", "abc", "-uuid4"}, wantCode: exitUsage, wantError: "-key"},
		{name: "two stores", args: []string{"stats", "-redis", redisURL, "-postgres", "postgres://x"}, wantCode: exitUsage, wantError: "name one store"},
		{name: "bad redis URL", args: []string{"stats", "-redis", "http://x"}, wantCode: exitUsage, wantError: "-redis"},
		{name: "bad timeout", args: []string{"stats", "-redis", redisURL, "-timeout", "0s"}, wantCode: exitUsage, wantError: "-timeout"},
		{name: "bad postgres URL", args: []string{"stats", "-postgres", "postgres://127.0.0.1:port/x"}, wantCode: exitUsage, wantError: "-postgres"},
		{name: "bad table", args: []string{"stats", "-postgres", postgresURL, "-table", "Charges; DROP"}, wantCode: exitUsage, wantError: "-table"},
		{name: "unreachable postgres", args: []string{"stats", "-postgres", postgresURL, "-timeout", "2s"}, wantCode: exitError, wantError: "127.0.0.1"},
		{name: "unreachable redis", args: []string{"stats", "-redis", redisURL, "-timeout", "2s"}, wantCode: exitError, wantError: "127.0.0.1:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := idemctl(t, tt.args...)
			assert.Equal(t, tt.wantCode, code)
			assert.Contains(t, stdout+stderr, tt.wantError)
		})
	}
}

// TestPasswordNeverShown checks that a store's password stays out of what
// idemctl prints when it cannot open the store.
func TestPasswordNeverShown(t *testing.T) {
	t.Parallel()
	const password = "s3cret-pw"
	tests := []struct {
		name     string
		args     []string
		wantCode int
	}{
		{name: "bad postgres URL", args: []string{"-postgres", "postgres://app:" + password + "@127.0.0.1:port/x"}, wantCode: exitUsage},
		{name: "unreachable postgres", args: []string{"-postgres", "postgres://app:" + password + "@127.0.0.1:1/x"}, wantCode: exitError},
		{name: "unreachable redis", args: []string{"-redis", "redis://app:" + password + "@127.0.0.1:1/0"}, wantCode: exitError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := idemctl(t, append([]string{"stats", "-timeout", "2s"}, tt.args...)...)
			assert.Equal(t, tt.wantCode, code)
			assert.NotEmpty(t, stderr)
			assert.NotContains(t, stdout+stderr, password)
		})
	}
}

// TestStoreFromEnvironment names the store with IDEMCTL_REDIS_URL or
// IDEMCTL_POSTGRES_URL, and checks that with no store named at all the
// command is a usage error. t.Setenv rules out t.Parallel.
func TestStoreFromEnvironment(t *testing.T) {
	for _, s := range stores {
		t.Run(s.name, func(t *testing.T) {
			f := s.fixture(t)
			t.Setenv(envRedisURL, "")
			t.Setenv(envPostgresURL, "")
			t.Setenv(f.env, f.url)
			code, out, _ := idemctl(t, append([]string{"stats"}, f.where...)...)
			assert.Equal(t, exitOK, code)
			assert.Contains(t, out, "claims:  0")
		})
	}

	t.Setenv(envRedisURL, "")
	t.Setenv(envPostgresURL, "")
	code, _, stderr := idemctl(t, "stats")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, envRedisURL)
	assert.Contains(t, stderr, envPostgresURL)
}
