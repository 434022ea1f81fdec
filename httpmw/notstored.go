package httpmw

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/idemkey/idempotency"
)

// notStored says why a guarded response was not stored (SPEC §4.2, §4.5).
// The zero value means it was stored.
type notStored uint8

const (
	storedOK notStored = iota
	notJSON
	invalidJSON
	untypedNotJSON
	untypedEncoded
	tooLarge
	flushed
	hijacked
	notFinal
	panicked
	requestEnded
	rpcProtocol
)

func (r notStored) String() string {
	switch r {
	case storedOK:
		return "stored"
	case notJSON:
		return "the Content-Type is not JSON"
	case invalidJSON:
		return "the body is not valid JSON"
	case untypedNotJSON:
		return "the body has no Content-Type and is not JSON"
	case untypedEncoded:
		return "the body has a Content-Encoding but no Content-Type"
	case tooLarge:
		return "the response is larger than the response size limit"
	case flushed:
		return "the handler flushed the response"
	case hijacked:
		return "the handler hijacked the connection"
	case notFinal:
		return "the handler answered a status outside 200-599"
	case panicked:
		return "the handler panicked"
	case requestEnded:
		return "the request ended before the handler answered"
	case rpcProtocol:
		return "gRPC, gRPC-Web and Connect streaming responses are not stored; guard such handlers with idempotency.NewInterceptor"
	}
	return "unknown"
}

// How often a route's warning for one reason is logged at most, and how
// many routes are told apart. Paths may carry identifiers, so the number
// of routes has no bound of its own; beyond the limit, routes share one
// count.
const (
	warnEvery     = time.Minute
	maxWarnRoutes = 1024
)

// otherRoutes names the count shared by the routes beyond maxWarnRoutes.
const otherRoutes = "(other routes)"

// warnings logs the guarded responses that were not stored, so that an
// endpoint that is not protected does not look as if it were. On a busy
// endpoint the same warning would repeat for every request: each route and
// reason is logged on its first occurrence, then at most once per
// warnEvery, with the number of occurrences left out since. It is safe for
// concurrent use.
type warnings struct {
	logger *slog.Logger
	now    func() time.Time

	mu     sync.Mutex
	seen   map[warnKey]*warnState
	pruned time.Time // when the table was last pruned
}

type warnKey struct {
	route  string
	reason notStored
}

type warnState struct {
	last       time.Time
	suppressed int
}

func newWarnings(logger *slog.Logger) *warnings {
	return &warnings{logger: logger, now: time.Now, seen: make(map[warnKey]*warnState)}
}

// notStored logs that the response to req was not stored, and why, unless
// the same route logged the same reason less than warnEvery ago. The log
// shows a prefix of the storage key's hash, never the key.
func (w *warnings) notStored(ctx context.Context, req *idempotency.Request, reason notStored, contentType []string) {
	if !w.logger.Enabled(ctx, slog.LevelWarn) {
		return
	}
	other, suppressed, ok := w.allow(req.Route, reason)
	if !ok {
		return
	}
	// The route is built for each request, on the stack where it can be:
	// what outlives the request is a copy.
	route := otherRoutes
	if !other {
		route = strings.Clone(req.Route)
	}
	attrs := make([]slog.Attr, 0, 5)
	attrs = append(attrs,
		slog.String("reason", reason.String()),
		slog.String("route", route),
		slog.String("key_hash", keyHash(req)))
	if (reason == notJSON || reason == invalidJSON) && len(contentType) > 0 {
		attrs = append(attrs, slog.String("content_type", contentType[0]))
	}
	if suppressed > 0 {
		attrs = append(attrs, slog.Int("suppressed", suppressed))
	}
	w.logger.LogAttrs(ctx, slog.LevelWarn,
		"httpmw: response not stored; a retry with the same key runs the handler again", attrs...)
}

// allow reports whether a warning for route and reason is due now, whether
// it is counted with the other routes, and how many were left out since
// the last one logged.
func (w *warnings) allow(route string, reason notStored) (other bool, suppressed int, ok bool) {
	now := w.now()
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.seen[warnKey{route, reason}]
	if st == nil && len(w.seen) >= maxWarnRoutes {
		// A full table is pruned now and then, not on every new route: a
		// scan that frees nothing would otherwise repeat, under the lock,
		// for every request.
		if now.Sub(w.pruned) >= warnEvery/4 {
			w.prune(now)
		}
		if len(w.seen) >= maxWarnRoutes {
			other = true
			st = w.seen[warnKey{otherRoutes, reason}]
		}
	}
	if st == nil {
		// The route may live on the request's stack; the table keeps a
		// copy.
		k := warnKey{otherRoutes, reason}
		if !other {
			k.route = strings.Clone(route)
		}
		w.seen[k] = &warnState{last: now}
		return other, 0, true
	}
	if now.Sub(st.last) < warnEvery {
		st.suppressed++
		return other, 0, false
	}
	n := st.suppressed
	st.last, st.suppressed = now, 0
	return other, n, true
}

// prune forgets the routes that logged nothing for warnEvery: their next
// warning is a first occurrence again. What they left out since their
// last line is not told: it would have been only with their next
// occurrence, which then starts anew.
func (w *warnings) prune(now time.Time) {
	w.pruned = now
	for k, st := range w.seen {
		if now.Sub(st.last) >= warnEvery {
			delete(w.seen, k)
		}
	}
}

// keyHash is what the logs show of a request's key: a prefix of its
// storage key, as the engine logs it.
func keyHash(req *idempotency.Request) string {
	k := idempotency.StorageKey(req.Scope, req.Route, req.Key)
	return k[:min(len(k), 12)]
}
