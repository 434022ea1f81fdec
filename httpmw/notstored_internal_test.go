package httpmw

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/store/memory"
)

// fakeClock is a clock that moves only when told to.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// logLines is a log output split into lines.
type logLines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logLines) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := strings.TrimSpace(l.buf.String())
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

var suppressedAttr = regexp.MustCompile(`suppressed=(\d+)`)

// suppressed returns the count a warning line reports, or 0.
func suppressed(t *testing.T, line string) int {
	t.Helper()
	m := suppressedAttr.FindStringSubmatch(line)
	if m == nil {
		return 0
	}
	n, err := strconv.Atoi(m[1])
	require.NoError(t, err)
	return n
}

// newWarnedHandler returns an HTML handler behind the middleware, whose
// warnings go to out and whose clock is clock.
func newWarnedHandler(out *logLines, clock *fakeClock) *handler {
	logger := slog.New(slog.NewTextHandler(out, nil))
	m := newMiddleware(idempotency.NewEngine(memory.New(), idempotency.WithLogger(logger)))
	m.warnings.now = clock.Now
	return &handler{m: m, next: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write([]byte("<p>ok</p>"))
	})}
}

func postHTML(t *testing.T, h http.Handler, path, key string) {
	t.Helper()
	r := httptest.NewRequestWithContext(t.Context(), http.MethodPost, path, strings.NewReader(`{}`))
	r.Header.Set("Idempotency-Key", key)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	require.Equal(t, http.StatusOK, rec.Code)
}

// TestNotStoredWarningsAreRateLimited checks that a busy endpoint whose
// responses are not stored logs a bounded number of lines: the first
// occurrence, then at most one line a minute per route and reason, with
// the count of those left out.
func TestNotStoredWarningsAreRateLimited(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		step      time.Duration // how far the clock moves after each request
		wantLines int
		wantEach  int // the suppressed count on every line after the first
	}{
		{name: "within a minute", step: 0, wantLines: 1},
		// Requests at 0 s, 1 s, ... 999 s: lines at 0, 60, ... 960 s.
		{name: "one a second", step: time.Second, wantLines: 17, wantEach: 59},
		{name: "one a minute", step: time.Minute, wantLines: 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var out logLines
			clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
			h := newWarnedHandler(&out, clock)
			for i := range 1000 {
				postHTML(t, h, "/page", "key-"+strconv.Itoa(i))
				clock.Advance(tt.step)
			}
			lines := out.lines()
			require.Len(t, lines, tt.wantLines)
			assert.Zero(t, suppressed(t, lines[0]), "the first occurrence")
			for _, line := range lines[1:] {
				assert.Equal(t, tt.wantEach, suppressed(t, line), line)
			}
			for _, line := range lines {
				assert.Contains(t, line, `route="POST /page"`)
				assert.NotContains(t, line, "key-")
			}
		})
	}
}

// TestNotStoredWarningsPerRouteAndReason checks that routes and reasons
// are counted apart: one busy route does not hide another.
func TestNotStoredWarningsPerRouteAndReason(t *testing.T) {
	t.Parallel()
	var out logLines
	clock := &fakeClock{now: time.Unix(0, 0)}
	h := newWarnedHandler(&out, clock)
	for i := range 100 {
		postHTML(t, h, "/a", "a-"+strconv.Itoa(i))
		postHTML(t, h, "/b", "b-"+strconv.Itoa(i))
	}
	w := h.m.warnings
	req := &idempotency.Request{Route: "POST /a", Key: "k"}
	w.notStored(t.Context(), req, invalidJSON, nil)
	w.notStored(t.Context(), req, invalidJSON, nil)

	lines := out.lines()
	require.Len(t, lines, 3)
	assert.Contains(t, lines[0], `route="POST /a"`)
	assert.Contains(t, lines[1], `route="POST /b"`)
	assert.Contains(t, lines[2], `reason="the body is not valid JSON"`)

	clock.Advance(warnEvery)
	postHTML(t, h, "/a", "a-late")
	lines = out.lines()
	require.Len(t, lines, 4)
	assert.Contains(t, lines[3], `route="POST /a"`)
	assert.Equal(t, 99, suppressed(t, lines[3]))
}

// TestNotStoredWarningsBoundedRoutes checks that paths with identifiers
// in them cannot grow the table of routes without bound: beyond the limit
// they share one count, and routes quiet for a minute make room again.
func TestNotStoredWarningsBoundedRoutes(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{now: time.Unix(0, 0)}
	w := newWarnings(slog.New(slog.DiscardHandler))
	w.now = clock.Now
	for i := range maxWarnRoutes {
		route := "POST /pay/" + strconv.Itoa(i)
		other, _, ok := w.allow(route, notJSON)
		require.True(t, ok)
		require.False(t, other)
		_, _, ok = w.allow(route, notJSON)
		require.False(t, ok, "a second occurrence within the minute")
	}
	lines := 0
	for i := range 5 * maxWarnRoutes {
		other, _, ok := w.allow("POST /more/"+strconv.Itoa(i), notJSON)
		require.True(t, other)
		if ok {
			lines++
		}
	}
	assert.Equal(t, 1, lines, "the routes beyond the limit share one count")
	assert.Len(t, w.seen, maxWarnRoutes+1)
	_, _, ok := w.allow("POST /pay/1", notJSON)
	assert.False(t, ok, "a route in the table keeps its own count")

	clock.Advance(warnEvery)
	other, n, ok := w.allow("POST /new", notJSON)
	assert.True(t, ok)
	assert.False(t, other, "quiet routes made room")
	assert.Zero(t, n)
	assert.Len(t, w.seen, 1)
}
