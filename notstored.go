package idempotency

import (
	"strings"
	"sync"
	"time"
)

// Why a guarded response was not stored, as [Execution.Skip] logs it (and
// as metrics count it). Adapters may pass words of their own too.
const (
	// ReasonPolicy: the store policy ([WithStorePolicy]) does not keep it.
	ReasonPolicy = "policy"
	// ReasonPanic: the handler panicked.
	ReasonPanic = "panic"
	// ReasonTooLarge: the response is over [WithMaxResponseSize].
	ReasonTooLarge = "too-large"
	// ReasonContextEnded: the handler returned because its request's
	// context ended.
	ReasonContextEnded = "context-ended"
	// ReasonNotEncodable: the response cannot be recorded (not a protobuf
	// message, or one that protojson rejects).
	ReasonNotEncodable = "not-encodable"
	// ReasonNotJSON: httpmw stores JSON only, and this response is not.
	ReasonNotJSON = "not-json"
	// ReasonStreamed: the handler flushed or hijacked the connection.
	ReasonStreamed = "streamed"
)

// logLimiter admits one log line per route and reason per minute, and
// counts the ones it leaves out. It keeps at most limiterMax pairs: past
// that, the routes it does not know share one entry per reason until the
// next minute, when it forgets them all, so routes with IDs in them cannot
// grow it, nor the log, without bound.
type logLimiter struct {
	mu   sync.Mutex
	seen map[limiterKey]*limiterEntry
	full int64 // the minute the map became full in
}

const (
	limiterWindow = int64(time.Minute)
	limiterMax    = 1024
)

type limiterKey struct{ route, reason string }

type limiterEntry struct {
	window  int64 // the minute of the last admitted line
	leftOut int   // lines left out since then
}

// admit reports whether a line for route and reason may be logged at now (a
// monotonic count of nanoseconds), and how many were left out before it.
func (l *logLimiter) admit(route, reason string, now int64) (int, bool) {
	window := now / limiterWindow
	k := limiterKey{route, reason}
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.seen[k]
	if !ok && len(l.seen) >= limiterMax {
		if l.full != window {
			l.seen = nil
		} else {
			k.route = "*"
			e, ok = l.seen[k]
		}
	}
	if ok {
		if e.window == window {
			e.leftOut++
			return 0, false
		}
		n := e.leftOut
		e.window, e.leftOut = window, 0
		return n, true
	}
	if l.seen == nil {
		l.seen = make(map[limiterKey]*limiterEntry)
	}
	l.seen[k] = &limiterEntry{window: window}
	if len(l.seen) == limiterMax {
		l.full = window
	}
	return 0, true
}

// routeTable keeps one copy of each route name that outlives a request (in
// an [Execution], an observation, a metric series), so that the route the
// adapter built for a request, often on its stack, never has to move to
// the heap: a known name costs a map lookup, a new one a copy, once. It
// holds at most routeTableMax names; past that, new ones are "_OTHER".
type routeTable struct {
	mu    sync.RWMutex
	names map[string]string
}

const routeTableMax = 4096

// intern returns the kept copy of name.
func (t *routeTable) intern(name string) string {
	t.mu.RLock()
	kept, ok := t.names[name]
	t.mu.RUnlock()
	if ok {
		return kept
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if kept, ok := t.names[name]; ok {
		return kept
	}
	if t.names == nil {
		t.names = make(map[string]string)
	}
	if len(t.names) >= routeTableMax {
		return "_OTHER"
	}
	kept = strings.Clone(name)
	t.names[kept] = kept
	return kept
}
