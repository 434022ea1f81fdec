package idempotency

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"
)

// An Option configures an [Engine], an [Interceptor], the middleware of
// package httpmw or a [ClientInterceptor]. Options that only one of them
// uses are accepted and ignored by the others. An option value that cannot
// work makes the constructor panic with a message naming the option.
type Option interface {
	apply(*config)
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// Defaults of the options, as the README lists them.
const (
	DefaultIdempotencyHeader = "Idempotency-Key"
	DefaultReplayHeader      = "Idempotent-Replayed"
	DefaultExpiry            = 24 * time.Hour
	DefaultLease             = 10 * time.Second
	DefaultRetryAfter        = time.Second
	DefaultStoreTimeout      = 2 * time.Second
	DefaultMaxBodySize       = 1 << 20
	DefaultMaxResponseSize   = 1 << 20
	DefaultMaxRetries        = 3
	DefaultBackoffInitial    = 100 * time.Millisecond
	DefaultBackoffMax        = 2 * time.Second
)

// config is the resolved set of options.
type config struct {
	keyHeader     string
	replayHeader  string
	enforceUUID4  bool
	expiry        time.Duration
	methods       []string
	requireKey    bool
	scope         func(context.Context, http.Header) string
	lease         time.Duration
	wait          time.Duration
	retryAfter    time.Duration
	storeTimeout  time.Duration
	failOpen      bool
	maxBody       int64
	maxResponse   int64
	storedHeaders []string
	policy        StorePolicy
	logger        *slog.Logger
	fingerprint   bool
	procedures    func(connect.Spec) bool
	procFilter    func(string) bool
	obs           obsConfig

	maxRetries     int
	backoffInitial time.Duration
	backoffMax     time.Duration
}

func newConfig(opts []Option) *config {
	c := &config{
		keyHeader:      DefaultIdempotencyHeader,
		replayHeader:   DefaultReplayHeader,
		expiry:         DefaultExpiry,
		methods:        []string{http.MethodPost, http.MethodPatch},
		lease:          DefaultLease,
		retryAfter:     DefaultRetryAfter,
		storeTimeout:   DefaultStoreTimeout,
		maxBody:        DefaultMaxBodySize,
		maxResponse:    DefaultMaxResponseSize,
		storedHeaders:  []string{"Content-Type", "Content-Encoding", "Content-Language", "Location"},
		policy:         StoreProcessed,
		fingerprint:    true,
		maxRetries:     DefaultMaxRetries,
		backoffInitial: DefaultBackoffInitial,
		backoffMax:     DefaultBackoffMax,
	}
	for _, o := range opts {
		if o != nil {
			o.apply(c)
		}
	}
	if c.backoffInitial > c.backoffMax {
		panicf("WithBackoff", "initial backoff %v is above the maximum %v", c.backoffInitial, c.backoffMax)
	}
	if c.logger == nil {
		c.logger = slog.Default()
	}
	return c
}

func panicf(option, format string, args ...any) {
	panic("idempotency: " + option + ": " + fmt.Sprintf(format, args...))
}

func headerName(option, name string) string {
	name = strings.TrimSpace(name)
	if name == "" {
		panicf(option, "header name must not be empty")
	}
	for i := range len(name) {
		if !isTokenChar(name[i]) {
			panicf(option, "%q is not a valid header name", name)
		}
	}
	return http.CanonicalHeaderKey(name)
}

func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// WithIdempotencyHeader sets the request header that carries the key.
// By default, it is "Idempotency-Key".
func WithIdempotencyHeader(name string) Option {
	return optionFunc(func(c *config) { c.keyHeader = headerName("WithIdempotencyHeader", name) })
}

// WithReplayHeader sets the header, with the value "true", that marks a
// replayed response (on a replayed Connect error, an entry of its metadata).
// By default, it is "Idempotent-Replayed".
func WithReplayHeader(name string) Option {
	return optionFunc(func(c *config) { c.replayHeader = headerName("WithReplayHeader", name) })
}

// WithEnforceUUID4 requires keys to be version 4 UUIDs with the RFC 4122
// variant, in any spelling that github.com/google/uuid parses; the key is
// then used in its canonical form. By default, keys are opaque bytes.
func WithEnforceUUID4(enforce bool) Option {
	return optionFunc(func(c *config) { c.enforceUUID4 = enforce })
}

// WithExpiry sets how long a completed response is kept and replayed; zero
// keeps it until the store drops it. By default, it is 24 hours.
func WithExpiry(d time.Duration) Option {
	return optionFunc(func(c *config) {
		if d < 0 {
			panicf("WithExpiry", "expiry must not be negative, got %v", d)
		}
		c.expiry = d
	})
}

// WithApplicableMethods sets the HTTP methods that the middleware of package
// httpmw guards; other methods pass through untouched. By default, they are
// POST and PATCH. The interceptor ignores this option.
func WithApplicableMethods(methods ...string) Option {
	return optionFunc(func(c *config) {
		if len(methods) == 0 {
			panicf("WithApplicableMethods", "at least one method is needed")
		}
		c.methods = make([]string, 0, len(methods))
		for _, m := range methods {
			m = strings.ToUpper(strings.TrimSpace(m))
			if m == "" {
				panicf("WithApplicableMethods", "method must not be empty")
			}
			c.methods = append(c.methods, m)
		}
	})
}

// WithRequireKey rejects guarded requests without a key: 400 from the
// middleware, [connect.CodeInvalidArgument] from the interceptor. By
// default, such requests pass through unguarded.
func WithRequireKey(require bool) Option {
	return optionFunc(func(c *config) { c.requireKey = require })
}

// WithKeyScope binds keys to the caller: the function returns the caller's
// identity (a tenant, an account, an API key's ID), and equal keys of
// different scopes never meet. By default, there is no scope, so one client
// that knows or guesses another's key can replay that client's response.
func WithKeyScope(scope func(ctx context.Context, header http.Header) string) Option {
	return optionFunc(func(c *config) { c.scope = scope })
}

// WithLease sets the lease of a claim: a holder that dies loses the key when
// the lease runs out. While the handler runs, the lease is renewed every
// third of it. By default, it is 10 seconds.
func WithLease(d time.Duration) Option {
	return optionFunc(func(c *config) {
		if d <= 0 {
			panicf("WithLease", "lease must be positive, got %v", d)
		}
		c.lease = d
	})
}

// WithWait makes a duplicate that finds its key in flight wait up to d, and
// never beyond its own context, for the first request to finish, and then
// answers it as a replay. By default, it is zero: the duplicate gets a
// conflict (409 / [connect.CodeAborted]) at once.
func WithWait(d time.Duration) Option {
	return optionFunc(func(c *config) {
		if d < 0 {
			panicf("WithWait", "wait must not be negative, got %v", d)
		}
		c.wait = d
	})
}

// WithRetryAfter sets the Retry-After hint, in whole seconds (rounded up),
// sent with an in-flight conflict. By default, it is 1 second.
func WithRetryAfter(d time.Duration) Option {
	return optionFunc(func(c *config) {
		if d <= 0 {
			panicf("WithRetryAfter", "hint must be positive, got %v", d)
		}
		c.retryAfter = d
	})
}

// WithStoreTimeout bounds each call to the store. By default, it is 2
// seconds.
func WithStoreTimeout(d time.Duration) Option {
	return optionFunc(func(c *config) {
		if d <= 0 {
			panicf("WithStoreTimeout", "timeout must be positive, got %v", d)
		}
		c.storeTimeout = d
	})
}

// WithFailOpen runs the handler unprotected, and logs a warning, when the
// store cannot be reached to claim a key. By default, the request fails
// closed: 503 / [connect.CodeUnavailable], and the handler does not run.
func WithFailOpen(failOpen bool) Option {
	return optionFunc(func(c *config) { c.failOpen = failOpen })
}

// WithMaxBodySize bounds the request body that the middleware reads to
// fingerprint it; a larger body is answered 413 and the handler does not
// run. By default, it is 1 MiB. The interceptor ignores this option:
// Connect's own read limit applies.
func WithMaxBodySize(n int64) Option {
	return optionFunc(func(c *config) {
		if n <= 0 {
			panicf("WithMaxBodySize", "limit must be positive, got %d", n)
		}
		c.maxBody = n
	})
}

// WithMaxResponseSize bounds the response that is stored; a larger response
// still reaches its client, but is not stored and the claim is released.
// By default, it is 1 MiB.
func WithMaxResponseSize(n int64) Option {
	return optionFunc(func(c *config) {
		if n <= 0 {
			panicf("WithMaxResponseSize", "limit must be positive, got %d", n)
		}
		c.maxResponse = n
	})
}

// WithStoredHeaders sets the response headers that the middleware stores
// and replays. Set-Cookie, Authorization and hop-by-hop headers are never
// stored, even when listed. By default, they are Content-Type,
// Content-Encoding, Content-Language and Location.
func WithStoredHeaders(names ...string) Option {
	return optionFunc(func(c *config) {
		c.storedHeaders = c.storedHeaders[:0:0]
		for _, n := range names {
			n = headerName("WithStoredHeaders", n)
			if !NeverStored(n) {
				c.storedHeaders = append(c.storedHeaders, n)
			}
		}
	})
}

// NeverStored reports whether a response header is one that the library
// never stores nor replays, whatever the allowlist says: credentials
// (Set-Cookie, Authorization, ...) and hop-by-hop headers, and
// Content-Length, which the server computes again. The name must be in
// canonical form ([http.CanonicalHeaderKey]). Adapters apply it when they
// store and again when they replay, so that a record written by another
// version cannot bring such a header in either.
func NeverStored(name string) bool {
	switch name {
	case "Set-Cookie", "Set-Cookie2", "Cookie", "Authorization", "Proxy-Authorization", "Proxy-Authenticate",
		"Www-Authenticate", "Connection", "Proxy-Connection", "Keep-Alive", "Te", "Trailer",
		"Transfer-Encoding", "Upgrade", "Content-Length":
		return true
	}
	return false
}

// WithStorePolicy decides which completed responses are stored and
// replayed; the others are released, so a retry runs the handler again.
// By default, it is [StoreProcessed]: every answer but 429 and 503 (and the
// RPC codes ResourceExhausted and Unavailable).
func WithStorePolicy(policy StorePolicy) Option {
	return optionFunc(func(c *config) {
		if policy == nil {
			panicf("WithStorePolicy", "policy must not be nil")
		}
		c.policy = policy
	})
}

// WithLogger sets the logger for store failures, lost leases and fail-open
// requests. Keys are never logged, only a prefix of their hash. By default,
// it is [slog.Default].
func WithLogger(logger *slog.Logger) Option {
	return optionFunc(func(c *config) { c.logger = logger })
}

// WithoutFingerprint turns payload fingerprinting off: a key reused with
// another payload is then answered with the first response. By default,
// such a request is rejected (422 / [connect.CodeInvalidArgument]).
func WithoutFingerprint() Option {
	return optionFunc(func(c *config) { c.fingerprint = false })
}

// WithProcedures sets which unary procedures the interceptor guards. By
// default, every procedure whose idempotency level is neither
// NO_SIDE_EFFECTS nor IDEMPOTENT. The middleware ignores this option.
func WithProcedures(guard func(connect.Spec) bool) Option {
	return optionFunc(func(c *config) {
		if guard == nil {
			panicf("WithProcedures", "function must not be nil")
		}
		c.procedures = guard
	})
}

// WithProcedureFilter sets which unary procedures the RPC adapters (the
// Connect v1 and v2 interceptors, package grpcmw) guard, by their full name
// ("/pkg.Service/Method"), on the server and on the client. By default,
// every procedure whose idempotency level is neither NO_SIDE_EFFECTS nor
// IDEMPOTENT. [WithProcedures], for Connect v1 only, takes precedence
// where both are set. The middleware ignores this option.
func WithProcedureFilter(guard func(procedure string) bool) Option {
	return optionFunc(func(c *config) {
		if guard == nil {
			panicf("WithProcedureFilter", "function must not be nil")
		}
		c.procFilter = guard
	})
}

// WithMaxRetries sets how many times a [ClientInterceptor] retries a call.
// By default, it is 3. The servers ignore this option.
func WithMaxRetries(n int) Option {
	return optionFunc(func(c *config) {
		if n < 0 {
			panicf("WithMaxRetries", "retries must not be negative, got %d", n)
		}
		c.maxRetries = n
	})
}

// WithBackoff sets the backoff of a [ClientInterceptor]: the first retry
// waits about initial, each next one twice as long, never more than maximum,
// with jitter. By default, it starts at 100 ms and stops growing at 2 s.
// The servers ignore this option.
func WithBackoff(initial, maximum time.Duration) Option {
	return optionFunc(func(c *config) {
		if initial <= 0 || maximum <= 0 {
			panicf("WithBackoff", "durations must be positive, got %v and %v", initial, maximum)
		}
		c.backoffInitial, c.backoffMax = initial, maximum
	})
}

// Outcome describes a completed response to a [StorePolicy].
type Outcome struct {
	// Status is the HTTP status; for the interceptor, the status that
	// Connect maps the error code to, or 200 for a response.
	Status int
	// Code is the Connect error code of a handler error, or zero.
	Code connect.Code
}

// A StorePolicy decides whether a completed response is stored.
type StorePolicy func(Outcome) bool

// StoreAll stores every completed response, whatever its status or code.
func StoreAll(Outcome) bool { return true }

// StoreProcessed is the default policy: it stores every completed response
// (errors and 500 included, as Stripe does) except the answers that by
// their definition mean "not processed, try again later": 429 Too Many
// Requests and 503 Service Unavailable, and for the RPC adapters
// ResourceExhausted and Unavailable, which map to them. Storing those would
// turn a rate limit, or a gateway whose backend is down, into a refusal
// for the record's whole life.
func StoreProcessed(o Outcome) bool {
	return o.Status != http.StatusTooManyRequests && o.Status != http.StatusServiceUnavailable &&
		o.Code != connect.CodeResourceExhausted && o.Code != connect.CodeUnavailable
}

// StoreSuccess stores only responses with a status below 400 (and, for the
// interceptor, no error).
func StoreSuccess(o Outcome) bool { return o.Status < 400 && o.Code == 0 }

// StoreUnlessServerError stores every response but those with a 5xx status
// or 429 Too Many Requests (for the interceptor, the codes that map to
// them), which a retry should run again.
func StoreUnlessServerError(o Outcome) bool {
	return o.Status < 500 && o.Status != http.StatusTooManyRequests
}
