package idempotency

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/idemkey/idempotency/internal/protorec"
)

// An Engine decides, for each guarded request, whether it runs, is
// replayed, conflicts with a request in flight, or is rejected; it owns the
// claim, its lease and token, and the record. The [Interceptor] and the
// middleware of package httpmw are thin adapters over it; other adapters
// can be built on it too. An Engine is safe for concurrent use.
type Engine struct {
	store   Store
	waiter  Waiter
	binder  TxBinder // the store's, or nil
	cfg     *config
	decoded decodedCache
	// renewals renews the leases of the executions in progress.
	renewals *renewals
	// timed is false for a NonBlocking store, whose calls need no timeout.
	timed bool
	// skipped bounds the warnings about responses that were not stored.
	skipped logLimiter
	// retryAfter is the in-flight hint, rendered once.
	retryAfter string
	// routes keeps the route names that outlive requests.
	routes *routeTable
	// obs reports decisions to metrics, traces and the observer hook.
	obs *observer
}

// NewEngine returns an engine over store. It panics if store is nil or an
// option cannot work.
func NewEngine(store Store, opts ...Option) *Engine {
	if store == nil {
		panic("idempotency: NewEngine: store must not be nil")
	}
	e := &Engine{store: store, cfg: newConfig(opts)}
	e.retryAfter = e.Settings().RetryAfterSeconds()
	e.routes = new(routeTable)
	e.obs = newObserver(e.cfg.obs, e.cfg.logger)
	e.obs.routes = e.routes
	e.renewals = newRenewals(e.cfg.lease / 3)
	e.waiter, _ = store.(Waiter)
	e.binder, _ = store.(TxBinder)
	_, nonBlocking := store.(NonBlocking)
	e.timed = !nonBlocking
	return e
}

// Settings are an engine's resolved options, for adapters. Each field holds
// the value of the option named in its comment, or that option's default.
type Settings struct {
	// IdempotencyHeader is the key's header ([WithIdempotencyHeader]).
	IdempotencyHeader string
	// ReplayHeader marks replayed responses ([WithReplayHeader]).
	ReplayHeader string
	// EnforceUUID4 requires keys to be v4 UUIDs ([WithEnforceUUID4]).
	EnforceUUID4 bool
	// Expiry is how long a completed record is replayed; zero never
	// expires ([WithExpiry]).
	Expiry time.Duration
	// ApplicableMethods are the HTTP methods httpmw guards
	// ([WithApplicableMethods]).
	ApplicableMethods []string
	// RequireKey rejects guarded requests without a key ([WithRequireKey]).
	RequireKey bool
	// KeyScope returns the caller's identity, or is nil ([WithKeyScope]).
	KeyScope func(context.Context, http.Header) string
	// Lease is a claim's lease, renewed every third of it ([WithLease]).
	Lease time.Duration
	// Wait is how long a duplicate waits for the first request; zero
	// answers at once ([WithWait]).
	Wait time.Duration
	// RetryAfter is the Retry-After hint of an in-flight answer
	// ([WithRetryAfter]); see [Settings.RetryAfterSeconds].
	RetryAfter time.Duration
	// StoreTimeout bounds each store call ([WithStoreTimeout]).
	StoreTimeout time.Duration
	// FailOpen runs handlers unprotected when the store cannot be reached
	// ([WithFailOpen]).
	FailOpen bool
	// MaxBodySize is the request body httpmw reads to fingerprint
	// ([WithMaxBodySize]).
	MaxBodySize int64
	// MaxResponseSize is the largest response that is stored
	// ([WithMaxResponseSize]).
	MaxResponseSize int64
	// StoredHeaders are the response headers httpmw stores
	// ([WithStoredHeaders]).
	StoredHeaders []string
	// Fingerprint says whether payloads are fingerprinted
	// ([WithoutFingerprint] turns it off).
	Fingerprint bool
	// Procedures says which unary procedures the interceptors guard
	// ([WithProcedures]).
	Procedures func(connect.Spec) bool
	// Logger receives the engine's warnings ([WithLogger]).
	Logger *slog.Logger
}

// Guards reports whether an RPC adapter guards a unary procedure: by
// [WithProcedureFilter] when set, otherwise when the procedure's
// idempotency level is neither NO_SIDE_EFFECTS nor IDEMPOTENT (safe is
// true for those).
func (e *Engine) Guards(procedure string, safe bool) bool {
	return e.cfg.guardsProcedure(procedure, safe)
}

// RetryAfterSeconds renders RetryAfter as the value of a Retry-After
// header: whole seconds, rounded up, at least one.
func (s Settings) RetryAfterSeconds() string {
	return strconv.FormatInt(max(1, int64((s.RetryAfter+time.Second-1)/time.Second)), 10)
}

// Settings returns the engine's resolved options. The slices are copies.
func (e *Engine) Settings() Settings {
	c := e.cfg
	return Settings{
		IdempotencyHeader: c.keyHeader,
		ReplayHeader:      c.replayHeader,
		EnforceUUID4:      c.enforceUUID4,
		Expiry:            c.expiry,
		ApplicableMethods: append([]string(nil), c.methods...),
		RequireKey:        c.requireKey,
		KeyScope:          c.scope,
		Lease:             c.lease,
		Wait:              c.wait,
		RetryAfter:        c.retryAfter,
		StoreTimeout:      c.storeTimeout,
		FailOpen:          c.failOpen,
		MaxBodySize:       c.maxBody,
		MaxResponseSize:   c.maxResponse,
		StoredHeaders:     append([]string(nil), c.storedHeaders...),
		Fingerprint:       c.fingerprint,
		Procedures:        c.procedures,
		Logger:            c.logger,
	}
}

// Key reads the key from a request's headers, as [ParseKey] does with the
// engine's header and UUID setting. It returns "" when there is none.
func (e *Engine) Key(h http.Header) (string, error) {
	return ParseKey(h.Values(e.cfg.keyHeader), e.cfg.enforceUUID4)
}

// ScopeOf returns the request's scope under [WithKeyScope], or "".
func (e *Engine) ScopeOf(ctx context.Context, h http.Header) string {
	if e.cfg.scope == nil {
		return ""
	}
	return e.cfg.scope(ctx, h)
}

// A Request identifies one guarded request to [Engine.Begin].
type Request struct {
	// Scope is the caller's identity under [WithKeyScope], or "".
	Scope string
	// Route names what the key is for: the method and path for HTTP, the
	// procedure for Connect. Equal keys on different routes never meet.
	Route string
	// Key is the parsed key (see [ParseKey]).
	Key string
	// Fingerprint identifies the payload; zero when fingerprinting is off.
	Fingerprint Fingerprint
	// Pattern names the route without the values in it, for metrics and
	// traces: the pattern that matched an HTTP request ("POST
	// /orders/{id}", [http.Request.Pattern]), or a gateway's. Without one,
	// they name the route by Route up to its first space: the method for
	// HTTP, the whole procedure for RPC. It never enters the storage key.
	Pattern string
}

// Begin claims the request's key. It returns exactly one of:
//   - an [Execution]: the caller runs the handler, then calls
//     [Execution.Complete] or [Execution.Release];
//   - a [Record]: the request was answered before; replay it. The record
//     is shared with other replays and must not be modified;
//   - an error wrapping [ErrInFlight], [ErrFingerprintMismatch] or
//     [ErrStoreUnavailable], or the context's error when ctx ended before
//     the key was claimed.
//
// With [WithFailOpen], a store failure yields an unprotected Execution
// instead of an error.
func (e *Engine) Begin(ctx context.Context, req Request) (*Execution, *Record, error) {
	ob := e.obs.start(ctx, &req)
	x, rec, err := e.begin(ctx, req, &ob)
	e.obs.begun(ctx, &ob, x, rec, err)
	if x != nil {
		x.obs = ob
	}
	return x, rec, err
}

// begin is Begin without observing; ob notes what it did.
func (e *Engine) begin(ctx context.Context, req Request, ob *observation) (*Execution, *Record, error) {
	key := storageKey(req.Scope, req.Route, req.Key)
	if ob.on {
		ob.keyHash = keyHash(key)
	}
	token := newToken()
	var deadline time.Time
	if e.cfg.wait > 0 {
		deadline = time.Now().Add(e.cfg.wait)
	}
	poll := 10 * time.Millisecond
	for {
		res, err := e.claim(ctx, key, token, ob)
		if err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				// The request ended while claiming: not an outage, and never
				// a reason to run the handler unprotected.
				return nil, nil, fmt.Errorf("idempotency: the request ended before its key was claimed: %w", ctxErr)
			}
			if e.cfg.failOpen {
				e.cfg.logger.LogAttrs(ctx, slog.LevelWarn, "idempotency: store unavailable; running the handler unprotected",
					slog.String("key_hash", keyHash(key)), slog.Any("error", err))
				return &Execution{e: e}, nil, nil
			}
			e.cfg.logger.LogAttrs(ctx, slog.LevelError, "idempotency: store unavailable",
				slog.String("key_hash", keyHash(key)), slog.Any("error", err))
			return nil, nil, fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
		}
		switch res.State {
		case StateClaimed:
			return e.newExecution(ctx, key, token, req), nil, nil
		case StateCompleted:
			rec, err := e.decode(key, res.Record)
			if err != nil {
				e.cfg.logger.LogAttrs(ctx, slog.LevelError, "idempotency: stored record cannot be decoded",
					slog.String("key_hash", keyHash(key)), slog.Any("error", err))
				return nil, nil, fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
			}
			if e.cfg.fingerprint && req.Fingerprint != (Fingerprint{}) &&
				rec.fingerprint != (Fingerprint{}) && rec.fingerprint != req.Fingerprint {
				return nil, nil, ErrFingerprintMismatch
			}
			return nil, rec, nil
		case StateInFlight:
			if deadline.IsZero() || !time.Now().Before(deadline) {
				return nil, nil, ErrInFlight
			}
			if err := e.wait(ctx, key, deadline, &poll, ob); err != nil {
				return nil, nil, fmt.Errorf("%w: %w", ErrInFlight, err)
			}
		default:
			return nil, nil, fmt.Errorf("%w: store answered unknown state %d", ErrStoreUnavailable, res.State)
		}
	}
}

// decode decodes a stored record, or takes it from the cache when the same
// bytes were decoded before.
func (e *Engine) decode(key string, raw []byte) (*Record, error) {
	if rec := e.decoded.get(key, raw); rec != nil {
		return rec, nil
	}
	rec, err := decodeRecord(raw)
	if err != nil {
		return nil, err
	}
	e.decoded.put(key, raw, rec)
	return rec, nil
}

func (e *Engine) claim(ctx context.Context, key, token string, ob *observation) (ClaimResult, error) {
	ctx, cancel := e.storeContext(ctx)
	defer cancel()
	ctx, call := e.obs.startStore(ctx, opClaim, ob)
	res, err := e.store.Claim(ctx, key, token, e.cfg.lease)
	e.obs.endStore(ctx, call, opClaim, ob, err)
	return res, err
}

// storeContext bounds one store call by the store timeout.
func (e *Engine) storeContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if !e.timed {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, e.cfg.storeTimeout)
}

// wait blocks until the in-flight claim on key may have ended, the deadline
// passes (nil: the caller looks once more and gives up), or ctx ends (its
// error).
func (e *Engine) wait(ctx context.Context, key string, deadline time.Time, poll *time.Duration, ob *observation) error {
	defer ob.waitedSince(ob.now())
	wctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if e.waiter != nil {
		sctx, call := e.obs.startStore(wctx, opWait, ob)
		err := e.waiter.Wait(sctx, key)
		e.obs.endStore(sctx, call, opWait, ob, err)
		if err != nil && ctx.Err() == nil && wctx.Err() == nil {
			// The store could not wait; fall back to polling once.
			e.cfg.logger.LogAttrs(ctx, slog.LevelWarn, "idempotency: waiting failed; polling",
				slog.String("key_hash", keyHash(key)), slog.Any("error", err))
		} else {
			return ctx.Err()
		}
	}
	t := time.NewTimer(*poll)
	defer t.Stop()
	*poll = min(*poll*2, 250*time.Millisecond)
	select {
	case <-t.C:
	case <-wctx.Done():
	}
	return ctx.Err()
}

// newToken returns a claim's token: 128 random bits, in 22 characters of
// base64. A token must be unique, not secret: it never leaves the server
// and its store. math/rand/v2's generator, ChaCha8 seeded by the operating
// system for each thread, gives that at a fraction of crypto/rand's cost,
// which showed in profiles of every first request.
func newToken() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// keyHash is what logs show of a storage key: a prefix of the hash, enough
// to correlate log lines, never the client's key.
func keyHash(key string) string {
	if len(key) > 12 {
		return key[:12]
	}
	return key
}

// An Execution is a claimed request: the caller runs the handler, then
// calls [Execution.Complete] with the response or [Execution.Release].
// While it runs, the claim's lease is renewed. Its methods are safe for
// concurrent use; the first of Complete and Release wins.
type Execution struct {
	e     *Engine
	key   string
	token string
	route string
	fp    Fingerprint
	ctx   context.Context
	tx    TxCompleter // the handler's transaction, under a TxBinder; see tx.go
	// obs is what observability noted about the request.
	obs observation

	// Its place in the engine's renewal queue, guarded by the queue's lock.
	prev, next *Execution
	due        int64
	queued     bool

	mu       sync.Mutex
	ended    bool
	lost     bool
	renewing sync.WaitGroup
}

func (e *Engine) newExecution(ctx context.Context, key, token string, req Request) *Execution {
	x := &Execution{e: e, key: key, token: token, route: e.routes.intern(metricRoute(&req)), fp: req.Fingerprint,
		ctx: context.WithoutCancel(ctx)}
	e.renewals.add(x, e.renewals.now())
	return x
}

// Protected reports whether the execution holds a claim; it does not when
// [WithFailOpen] let the request run while the store was unavailable.
func (x *Execution) Protected() bool { return x.key != "" }

// LeaseLost reports whether the claim was found lost while the handler ran.
func (x *Execution) LeaseLost() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.lost
}

// startRenewal renews the lease in a goroutine of its own, unless the
// execution ended: the renewal queue must not wait for the store.
func (x *Execution) startRenewal() {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.ended || x.lost {
		return
	}
	x.renewing.Add(1)
	go x.renew()
}

func (x *Execution) renew() {
	defer x.renewing.Done()
	r := x.e.renewals
	// A renewal must end before the next is due: one that waits longer
	// than that on a slow store would let the lease run out meanwhile.
	start := r.now()
	ctx, cancel := context.WithTimeout(x.ctx, min(x.e.cfg.storeTimeout, r.interval))
	ctx, call := x.e.obs.startStore(ctx, opRenew, nil)
	err := x.e.store.Renew(ctx, x.key, x.token, x.e.cfg.lease)
	x.e.obs.endStore(ctx, call, opRenew, nil, err)
	cancel()

	x.mu.Lock()
	defer x.mu.Unlock()
	switch {
	case errors.Is(err, ErrNotHeld):
		x.lost = true
		x.e.cfg.logger.LogAttrs(x.ctx, slog.LevelWarn,
			"idempotency: claim lost while the handler runs; its response will not be stored",
			slog.String("key_hash", keyHash(x.key)))
		return
	case err != nil:
		x.e.cfg.logger.LogAttrs(x.ctx, slog.LevelWarn, "idempotency: lease renewal failed",
			slog.String("key_hash", keyHash(x.key)), slog.Any("error", err))
	}
	if !x.ended {
		// Counted from when this renewal was sent, so that slow renewals do
		// not drift towards the end of the lease.
		r.add(x, start)
	}
}

// end stops the renewal and waits for one in progress. It reports false if
// the execution had already ended.
func (x *Execution) end() bool {
	if x.key == "" {
		return false
	}
	x.mu.Lock()
	if x.ended {
		x.mu.Unlock()
		return false
	}
	x.ended = true
	x.mu.Unlock()
	x.e.renewals.remove(x)
	x.renewing.Wait()
	return true
}

// Complete stores rec as the request's response, if the store policy
// accepts it, and ends the claim, in one store call; a response the policy
// rejects releases the claim instead. It runs on a context detached from
// the request's cancellation. On failure it logs, releases the claim if it
// is still this execution's, and returns the error: the caller still
// answers its client, and a retry may run the handler again; but when the
// error wraps [ErrNotCommitted], the handler's writes were rolled back and
// the caller answers its store-unavailable error instead. Complete does
// not keep rec, nor its headers or body, after it returns: the caller may
// reuse them.
func (x *Execution) Complete(rec *Record) error {
	if !x.end() {
		return nil
	}
	cfg := x.e.cfg
	code := connect.Code(0)
	if rec.Error != nil {
		code = connect.Code(rec.Error.Code)
		if rec.Status == 0 {
			rec.Status = protorec.HTTPStatus(rec.Error.Code)
		}
	}
	if !cfg.policy(Outcome{Status: rec.Status, Code: code}) {
		return x.skip(ReasonPolicy)
	}
	rec.fingerprint = x.fp
	buf := getBuffer()
	defer putBuffer(buf)
	*buf = appendRecord((*buf)[:0], rec)

	ctx, cancel := x.e.storeContext(x.ctx)
	defer cancel()
	ctx, call := x.e.obs.startStore(ctx, opComplete, &x.obs)
	var (
		err   error
		began bool
	)
	if x.tx != nil {
		began, err = x.completeTx(ctx, *buf)
	}
	if !began {
		err = x.e.store.Complete(ctx, x.key, x.token, *buf, cfg.expiry)
	}
	x.e.obs.endStore(ctx, call, opComplete, &x.obs, err)
	defer x.e.obs.ended(x, err)
	if began {
		// completeTx logged what went wrong and rolled back.
		return err
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNotHeld):
		cfg.logger.LogAttrs(ctx, slog.LevelWarn,
			"idempotency: claim lost before the response was stored; it was not stored",
			slog.String("key_hash", keyHash(x.key)))
		return err
	default:
		cfg.logger.LogAttrs(ctx, slog.LevelError,
			"idempotency: storing the response failed; a retry may run the handler again",
			slog.String("key_hash", keyHash(x.key)), slog.Any("error", err))
		_ = x.release()
		return fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
	}
}

// Release ends the claim without storing anything, so that a retry runs
// the handler again. It runs on a context detached from the request's
// cancellation, and logs a failure. An adapter that does not store a
// guarded response calls [Execution.Skip] instead, which says why.
func (x *Execution) Release() error {
	if !x.end() {
		return nil
	}
	defer x.e.obs.skipped(x, reasonReleased)
	return x.release()
}

// Skip ends the claim without storing the response, for reason (one of the
// Reason constants, or an adapter's own short word), as [Execution.Release]
// does, and logs at Warn that a guarded response was not stored and why,
// so that an endpoint whose responses are never stored does not look
// protected. The route it logs is the one metrics name ([Request.Pattern],
// or the method; the procedure for the RPC adapters), never a path with
// values in it. The log is bounded: per route and reason, the first line
// of each minute, with the count of those left out before it.
func (x *Execution) Skip(reason string) error {
	if !x.end() {
		return nil
	}
	return x.skip(reason)
}

func (x *Execution) skip(reason string) error {
	if n, ok := x.e.skipped.admit(x.route, reason, x.e.renewals.now()); ok {
		x.e.cfg.logger.LogAttrs(x.ctx, slog.LevelWarn,
			"idempotency: response not stored; a retry runs the handler again",
			slog.String("reason", reason), slog.String("route", x.route),
			slog.String("key_hash", keyHash(x.key)), slog.Int("left_out_before", n))
	}
	defer x.e.obs.skipped(x, reason)
	return x.release()
}

func (x *Execution) release() error {
	ctx, cancel := x.e.storeContext(x.ctx)
	defer cancel()
	if x.tx != nil {
		x.rollbackTx(ctx)
	}
	ctx, call := x.e.obs.startStore(ctx, opRelease, &x.obs)
	err := x.e.store.Release(ctx, x.key, x.token)
	x.e.obs.endStore(ctx, call, opRelease, &x.obs, err)
	if err != nil && !errors.Is(err, ErrNotHeld) {
		x.e.cfg.logger.LogAttrs(ctx, slog.LevelError, "idempotency: releasing the claim failed",
			slog.String("key_hash", keyHash(x.key)), slog.Any("error", err))
		return fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
	}
	return nil
}

var bufferPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

func getBuffer() *[]byte { return bufferPool.Get().(*[]byte) }

func putBuffer(b *[]byte) {
	if cap(*b) <= 64<<10 {
		bufferPool.Put(b)
	}
}

// Rejected reports a guarded request that an adapter refused before
// [Engine.Begin] (a key that is invalid, or missing under
// [WithRequireKey]; a request it cannot fingerprint), so that it is
// observed like the engine's own decisions. err is what the adapter
// answered with. route names the route as metrics do (see
// [Request.Pattern]): the procedure for RPC; for HTTP, the pattern that
// matched, or the method; never a path with values in it.
func (e *Engine) Rejected(ctx context.Context, route string, err error) {
	e.obs.rejected(ctx, route, err)
}
