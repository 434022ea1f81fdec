package soak

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemkey/idempotency"
)

// slot ties a request's store calls to the execution of the handler that
// it runs. It travels in the request's context, which the engine hands to
// the store, detached from its cancellation, for the calls after the
// handler too.
type slot struct {
	// claimStart and claimEnd bound the claim call that won the claim;
	// they are written and read on the request's goroutine, before the
	// handler runs.
	claimStart, claimEnd time.Time
	exec                 atomic.Pointer[execution]
}

type slotKey struct{}

func slotOf(ctx context.Context) *slot {
	sl, _ := ctx.Value(slotKey{}).(*slot)
	return sl
}

// withSlot gives every request a [slot], before the middleware sees it.
func withSlot(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := context.WithValue(r.Context(), slotKey{}, &slot{})
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// observedStore is a store that tells the ledger what the store it wraps
// answered, and for which execution.
type observedStore struct {
	idempotency.Store
	led *ledger
}

// waitingStore is an [observedStore] over a store that can wait, so that
// the engine still finds the capability.
type waitingStore struct {
	*observedStore
	idempotency.Waiter
}

// observe wraps store, keeping its [idempotency.Waiter] if it has one.
func observe(store idempotency.Store, led *ledger) idempotency.Store {
	o := &observedStore{Store: store, led: led}
	if w, ok := store.(idempotency.Waiter); ok {
		return &waitingStore{observedStore: o, Waiter: w}
	}
	return o
}

func (s *observedStore) Claim(ctx context.Context, key, token string, lease time.Duration) (idempotency.ClaimResult, error) {
	sent := time.Now()
	res, err := s.Store.Claim(ctx, key, token, lease)
	if sl := slotOf(ctx); sl != nil && err == nil && res.State == idempotency.StateClaimed {
		sl.claimStart, sl.claimEnd = sent, time.Now()
	}
	s.led.claimed(res, err)
	return res, err
}

func (s *observedStore) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	sent := time.Now()
	err := s.Store.Renew(ctx, key, token, lease)
	s.led.renewed(slotOf(ctx), sent, err)
	return err
}

func (s *observedStore) Complete(ctx context.Context, key, token string, record []byte, expiry time.Duration) error {
	sent := time.Now()
	err := s.Store.Complete(ctx, key, token, record, expiry)
	s.led.completed(slotOf(ctx), sent, err)
	return err
}

func (s *observedStore) Release(ctx context.Context, key, token string) error {
	err := s.Store.Release(ctx, key, token)
	s.led.releasedClaim(slotOf(ctx), err)
	return err
}

// clientKeyPattern matches the keys that the clients send (v4 UUIDs), so
// that a log line that carries one can be caught.
var clientKeyPattern = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}`)

// logCounter counts the library's log records by level and message, and
// those that carry a client's key, which must never happen. It keeps the
// test's output readable while faults make the library log thousands of
// lines.
type logCounter struct {
	mu      sync.Mutex
	counts  map[string]int
	rawKeys int
}

func newLogCounter() *logCounter { return &logCounter{counts: make(map[string]int)} }

// logger returns a logger that counts into c.
func (c *logCounter) logger() *slog.Logger { return slog.New(&countingHandler{c: c}) }

func (c *logCounter) add(level slog.Level, msg string, carriesKey bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.counts[level.String()+" "+msg]++
	if carriesKey {
		c.rawKeys++
	}
}

// lines returns the counted messages, most frequent first, and the number
// of records that carried a client's key.
func (c *logCounter) lines() ([]string, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	lines := make([]string, 0, len(c.counts))
	for msg, n := range c.counts {
		lines = append(lines, fmt.Sprintf("%6d  %s", n, msg))
	}
	sort.Sort(sort.Reverse(sort.StringSlice(lines)))
	return lines, c.rawKeys
}

type countingHandler struct {
	c     *logCounter
	attrs []slog.Attr
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	var text strings.Builder
	text.WriteString(r.Message)
	for _, a := range h.attrs {
		fmt.Fprintf(&text, " %s=%v", a.Key, a.Value)
	}
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&text, " %s=%v", a.Key, a.Value)
		return true
	})
	h.c.add(r.Level, r.Message, clientKeyPattern.MatchString(text.String()))
	return nil
}

func (h *countingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &countingHandler{c: h.c, attrs: append(h.attrs[:len(h.attrs):len(h.attrs)], attrs...)}
}

func (h *countingHandler) WithGroup(string) slog.Handler { return h }

// serverLog counts what the HTTP servers log: a handler's panic, which
// net/http recovers and logs, and anything else.
type serverLog struct {
	panics atomic.Int64
	other  atomic.Int64
}

func (s *serverLog) Write(p []byte) (int, error) {
	// log.Logger writes each entry with one call; a panic's entry carries
	// its stack on further lines.
	if bytes.Contains(p, []byte("http: panic serving")) {
		s.panics.Add(1)
	} else {
		s.other.Add(1)
	}
	return len(p), nil
}
