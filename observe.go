package idempotency

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
)

// The outcomes of guarded requests, as [Decision.Outcome], the metric
// attribute idempotency.outcome and the span attribute of the same name
// report them. Each guarded request has exactly one.
const (
	// OutcomeExecuted: the handler ran and its response was stored.
	OutcomeExecuted = "executed"
	// OutcomeReplayed: the stored response was replayed.
	OutcomeReplayed = "replayed"
	// OutcomeInFlight: another request with the key was running (after
	// waiting, under [WithWait]).
	OutcomeInFlight = "in-flight"
	// OutcomeMismatch: the key was used before with another payload.
	OutcomeMismatch = "mismatch"
	// OutcomeInvalidKey: the key was malformed.
	OutcomeInvalidKey = "invalid-key"
	// OutcomeKeyRequired: the key was missing under [WithRequireKey].
	OutcomeKeyRequired = "key-required"
	// OutcomeBodyTooLarge: the request body was over [WithMaxBodySize].
	OutcomeBodyTooLarge = "body-too-large"
	// OutcomeRejected: an adapter refused the request before the engine
	// was asked, for another reason (a body it could not read, a message
	// it could not fingerprint).
	OutcomeRejected = "rejected"
	// OutcomeStoreUnavailable: the store failed. With the reason
	// "complete", the handler ran but its response could not be stored.
	OutcomeStoreUnavailable = "store-unavailable"
	// OutcomeNotStored: the handler ran and its response was delivered but
	// not stored; [Decision.Reason] says why (a Reason constant, "released"
	// for [Execution.Release], or an adapter's own word).
	OutcomeNotStored = "not-stored"
	// OutcomeLeaseLost: the claim was lost while the handler ran; its
	// response was not stored.
	OutcomeLeaseLost = "lease-lost"
	// OutcomeFailOpen: the store failed and, under [WithFailOpen], the
	// handler ran unprotected.
	OutcomeFailOpen = "fail-open"
	// OutcomeCanceled: the request's context ended before its key was
	// claimed.
	OutcomeCanceled = "canceled"
)

// reasonReleased is the reason of a response an adapter released with
// [Execution.Release], which gives none.
const reasonReleased = "released"

// reasonComplete marks [OutcomeStoreUnavailable] when storing the response
// failed, after the handler ran.
const reasonComplete = "complete"

// A Decision is what the engine decided for one guarded request, as an
// observer set with [WithObserver] receives it.
type Decision struct {
	// Outcome is one of the Outcome constants.
	Outcome string
	// Reason details [OutcomeNotStored] (a Reason constant) and
	// [OutcomeStoreUnavailable] ("complete" when the handler ran); "" for
	// the others.
	Reason string
	// Route is the request's route as metrics name it: [Request.Pattern],
	// or its Route up to the first space (the method, for HTTP; the whole
	// procedure, for RPC). It never holds the values of a path.
	Route string
	// KeyHash is the prefix of the storage key's hash that logs show too;
	// never the client's key. It is "" for requests rejected before the
	// key was read.
	KeyHash string
	// Store is the time spent in store calls for this request: claims,
	// waits, and storing or releasing; lease renewals are not included.
	Store time.Duration
	// Wait is how long the request waited for another one with its key,
	// under [WithWait].
	Wait time.Duration
	// Decide is the time [Engine.Begin] took to decide.
	Decide time.Duration
	// Elapsed runs from the start of [Engine.Begin] to the outcome: for a
	// request that ran, it includes the handler and storing its response.
	Elapsed time.Duration
}

// WithObserver calls observe once for every guarded request, with its
// outcome, from the goroutine that decided it: from [Engine.Begin] or
// [Engine.Rejected], or for a request that ran from the call that ended
// its execution. ctx is the request's context (for a request that ran,
// detached from its cancellation). observe must be safe for concurrent
// use and should return quickly. By default, there is none, and the engine
// does not time requests for it.
func WithObserver(observe func(ctx context.Context, d Decision)) Option {
	return optionFunc(func(c *config) { c.obs.hook = observe })
}

// WithMeterProvider sets where the engine creates its instruments (see the
// README for their names). By default, it is the global one,
// [otel.GetMeterProvider], so that a service that set one up gets the
// metrics without code; with none set, recording costs close to nothing.
func WithMeterProvider(provider metric.MeterProvider) Option {
	return optionFunc(func(c *config) {
		if provider == nil {
			panicf("WithMeterProvider", "provider must not be nil")
		}
		c.obs.meters = provider
	})
}

// WithTracerProvider sets where the engine starts a span for each store
// call, under the request's span when that one is recording. By default,
// it is the global one, [otel.GetTracerProvider]. Decision events go on
// the request's current span whatever this option says.
func WithTracerProvider(provider trace.TracerProvider) Option {
	return optionFunc(func(c *config) {
		if provider == nil {
			panicf("WithTracerProvider", "provider must not be nil")
		}
		c.obs.tracers = provider
	})
}

// obsConfig holds the observability options.
type obsConfig struct {
	hook    func(context.Context, Decision)
	meters  metric.MeterProvider
	tracers trace.TracerProvider
}

const instrumentationName = "github.com/idemkey/idempotency"

// The instruments' names, units and the attributes they carry.
const (
	metricDecisions     = "idempotency.decisions"
	metricStoreDuration = "idempotency.store.duration"
	metricWaitDuration  = "idempotency.wait.duration"

	attrOutcome   = attribute.Key("idempotency.outcome")
	attrReason    = attribute.Key("idempotency.reason")
	attrRoute     = attribute.Key("idempotency.route")
	attrKeyHash   = attribute.Key("idempotency.key_hash")
	attrOperation = attribute.Key("idempotency.store.operation")
	attrErrorType = attribute.Key("error.type")
)

// A storeOp is one kind of store call.
type storeOp uint8

const (
	opClaim storeOp = iota
	opComplete
	opRelease
	opRenew
	opWait
	numOps
)

var opNames = [numOps]string{"claim", "complete", "release", "renew", "wait"}

// spanNames are the store calls' span names, built once.
var spanNames = [numOps]string{"idempotency.claim", "idempotency.complete", "idempotency.release", "idempotency.renew", "idempotency.wait"}

// How a store call ended, for the error.type attribute.
const (
	callOK = iota
	callTimeout
	callFailed
	numCallResults
)

// observer reports an engine's decisions to its instruments, spans and
// hook. It is safe for concurrent use.
type observer struct {
	hook      func(context.Context, Decision)
	tracer    trace.Tracer
	decisions metric.Int64Counter
	storeDur  metric.Float64Histogram
	waitDur   metric.Float64Histogram

	// storeAttrs are the attribute sets of store calls, by operation and
	// result, built once. The options are kept as the slices the
	// instruments take, so that recording builds none.
	storeAttrs [numOps][numCallResults][]metric.RecordOption

	// routes is the engine's table of route names.
	routes *routeTable

	mu       sync.RWMutex
	counted  map[decisionKey][]metric.AddOption
	waitOpts map[string][]metric.RecordOption
}

// decisionKey names one series of the decisions counter.
type decisionKey struct{ route, outcome, reason string }

// maxSeries bounds the attribute sets the observer keeps; past it, new
// routes are counted under the route "_OTHER", so that a route with values
// in it cannot grow memory or a metrics backend without bound.
const maxSeries = 2048

func newObserver(c obsConfig, logger *slog.Logger) *observer {
	o := &observer{
		hook:     c.hook,
		counted:  make(map[decisionKey][]metric.AddOption),
		waitOpts: make(map[string][]metric.RecordOption),
	}
	tracers := c.tracers
	if tracers == nil {
		tracers = otel.GetTracerProvider()
	}
	o.tracer = tracers.Tracer(instrumentationName)
	meters := c.meters
	if meters == nil {
		meters = otel.GetMeterProvider()
	}
	meter := meters.Meter(instrumentationName)
	var err error
	o.decisions, err = meter.Int64Counter(metricDecisions, metric.WithUnit("{request}"),
		metric.WithDescription("Guarded requests, by the outcome the idempotency engine decided."))
	if err != nil {
		o.decisions = metricnoop.Int64Counter{}
		logger.Error("idempotency: creating a metric failed; it is not recorded", slog.String("metric", metricDecisions), slog.Any("error", err))
	}
	o.storeDur, err = meter.Float64Histogram(metricStoreDuration, metric.WithUnit("s"),
		metric.WithDescription("Duration of the idempotency engine's calls to its store, by operation."),
		metric.WithExplicitBucketBoundaries(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
	if err != nil {
		o.storeDur = metricnoop.Float64Histogram{}
		logger.Error("idempotency: creating a metric failed; it is not recorded", slog.String("metric", metricStoreDuration), slog.Any("error", err))
	}
	o.waitDur, err = meter.Float64Histogram(metricWaitDuration, metric.WithUnit("s"),
		metric.WithDescription("How long duplicates waited for the request in flight with their key, by outcome."),
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
	if err != nil {
		o.waitDur = metricnoop.Float64Histogram{}
		logger.Error("idempotency: creating a metric failed; it is not recorded", slog.String("metric", metricWaitDuration), slog.Any("error", err))
	}
	for op := range numOps {
		name := attrOperation.String(opNames[op])
		o.storeAttrs[op][callOK] = recordOptions(name)
		o.storeAttrs[op][callTimeout] = recordOptions(name, attrErrorType.String("timeout"))
		o.storeAttrs[op][callFailed] = recordOptions(name, attrErrorType.String("_OTHER"))
	}
	return o
}

// An observation is what the engine notes about one guarded request while
// it decides. It is a value inside the request's [Execution] or on the
// stack of [Engine.Begin], so observing allocates nothing.
type observation struct {
	// on is false when nothing observes the request: no hook, no enabled
	// instrument, no recording span. Then nothing is timed.
	on      bool
	start   time.Time
	store   time.Duration
	waited  time.Duration
	decide  time.Duration
	route   string
	keyHash string
	// span is the request's span, looked up once, and ctx the request's
	// own context, for the metrics: a lookup in the detached context of an
	// execution allocates, and the SDK's exemplar filter makes one.
	span trace.Span
	ctx  context.Context
}

// enabled reports whether anything would see a decision made now on ctx,
// in span.
func (o *observer) enabled(ctx context.Context, span trace.Span) bool {
	return o.hook != nil || o.decisions.Enabled(ctx) || o.storeDur.Enabled(ctx) ||
		o.waitDur.Enabled(ctx) || span.IsRecording()
}

// start begins the observation of a request that reaches [Engine.Begin].
func (o *observer) start(ctx context.Context, req *Request) observation {
	span := trace.SpanFromContext(ctx)
	if !o.enabled(ctx, span) {
		return observation{}
	}
	return observation{on: true, start: time.Now(), route: o.routes.intern(metricRoute(req)), span: span, ctx: ctx}
}

// metricRoute names a request's route without the values in it.
func metricRoute(req *Request) string {
	if req.Pattern != "" {
		return req.Pattern
	}
	if i := strings.IndexByte(req.Route, ' '); i >= 0 {
		return req.Route[:i]
	}
	return req.Route
}

// now returns the time if the request is observed, and the zero time if not.
func (ob *observation) now() time.Time {
	if ob == nil || !ob.on {
		return time.Time{}
	}
	return time.Now()
}

// waitedSince adds the time since start to the request's waiting.
func (ob *observation) waitedSince(start time.Time) {
	if !start.IsZero() {
		ob.waited += time.Since(start)
	}
}

// A storeCall is one observed store call in progress.
type storeCall struct {
	start time.Time
	span  trace.Span // nil unless the request's span records
}

// startStore begins observing a store call for the request ob (nil for a
// renewal, which belongs to no decision). It returns the context for the
// call: with a child span when the request's span is recording.
func (o *observer) startStore(ctx context.Context, op storeOp, ob *observation) (context.Context, storeCall) {
	var span trace.Span
	switch {
	case ob != nil && !ob.on:
		return ctx, storeCall{}
	case ob != nil:
		span = ob.span
	default:
		span = trace.SpanFromContext(ctx)
		if !o.storeDur.Enabled(ctx) && !span.IsRecording() {
			return ctx, storeCall{}
		}
	}
	c := storeCall{start: time.Now()}
	if span.IsRecording() {
		opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindInternal),
			trace.WithAttributes(attrOperation.String(opNames[op]))}
		if ob != nil && ob.keyHash != "" {
			opts = append(opts, trace.WithAttributes(attrKeyHash.String(ob.keyHash)))
		}
		ctx, c.span = o.tracer.Start(ctx, spanNames[op], opts...)
	}
	return ctx, c
}

// endStore ends a store call's observation: err is what the store returned.
func (o *observer) endStore(ctx context.Context, c storeCall, op storeOp, ob *observation, err error) {
	if c.start.IsZero() {
		return
	}
	d := time.Since(c.start)
	if ob != nil {
		ob.store += d
	}
	result := callOK
	switch {
	case err == nil, errors.Is(err, ErrNotHeld):
	case errors.Is(err, context.DeadlineExceeded):
		result = callTimeout
	default:
		result = callFailed
	}
	if ob != nil && ob.ctx != nil {
		ctx = ob.ctx
	}
	if o.storeDur.Enabled(ctx) {
		o.storeDur.Record(ctx, d.Seconds(), o.storeAttrs[op][result]...)
	}
	if c.span != nil {
		switch {
		case errors.Is(err, ErrNotHeld):
			c.span.SetAttributes(attribute.Bool("idempotency.not_held", true))
		case err != nil:
			c.span.RecordError(err)
			c.span.SetStatus(codes.Error, "idempotency store call failed")
		}
		c.span.End()
	}
}

// begun reports what [Engine.Begin] decided: every result but a claim,
// which is reported when its execution ends.
func (o *observer) begun(ctx context.Context, ob *observation, x *Execution, rec *Record, err error) {
	if !ob.on {
		return
	}
	ob.decide = time.Since(ob.start)
	switch {
	case rec != nil:
		o.decided(ctx, ob, OutcomeReplayed, "")
	case err != nil:
		o.decided(ctx, ob, outcomeOf(err), "")
	case !x.Protected():
		o.decided(ctx, ob, OutcomeFailOpen, "")
	case ob.span.IsRecording():
		// The outcome comes when the execution ends; the span shows
		// meanwhile when the handler started under the claim.
		ob.span.AddEvent("idempotency.claimed", trace.WithAttributes(
			attrRoute.String(ob.route), attrKeyHash.String(ob.keyHash)))
	}
}

// outcomeOf names the outcome of a request the engine or an adapter
// refused with err.
func outcomeOf(err error) string {
	switch {
	case errors.Is(err, ErrInFlight):
		return OutcomeInFlight
	case errors.Is(err, ErrFingerprintMismatch):
		return OutcomeMismatch
	case errors.Is(err, ErrStoreUnavailable):
		return OutcomeStoreUnavailable
	case errors.Is(err, ErrInvalidKey):
		return OutcomeInvalidKey
	case errors.Is(err, ErrKeyRequired):
		return OutcomeKeyRequired
	case errors.Is(err, ErrBodyTooLarge):
		return OutcomeBodyTooLarge
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return OutcomeCanceled
	}
	return OutcomeRejected
}

// ended reports the outcome of an execution: err is what storing its
// response returned.
func (o *observer) ended(x *Execution, err error) {
	switch {
	case !x.obs.on:
	case err == nil:
		o.decided(x.ctx, &x.obs, OutcomeExecuted, "")
	case errors.Is(err, ErrNotHeld):
		o.decided(x.ctx, &x.obs, OutcomeLeaseLost, "")
	default:
		o.decided(x.ctx, &x.obs, OutcomeStoreUnavailable, reasonComplete)
	}
}

// skipped reports an execution whose response was not stored, for reason.
func (o *observer) skipped(x *Execution, reason string) {
	if !x.obs.on {
		return
	}
	if x.LeaseLost() {
		o.decided(x.ctx, &x.obs, OutcomeLeaseLost, "")
		return
	}
	o.decided(x.ctx, &x.obs, OutcomeNotStored, reason)
}

// rejected reports a request that an adapter refused before Begin.
func (o *observer) rejected(ctx context.Context, route string, err error) {
	span := trace.SpanFromContext(ctx)
	if !o.enabled(ctx, span) {
		return
	}
	ob := observation{on: true, route: route, span: span}
	o.decided(ctx, &ob, outcomeOf(err), "")
}

// decided reports one request's outcome to the metrics, the current span
// and the hook.
func (o *observer) decided(ctx context.Context, ob *observation, outcome, reason string) {
	var elapsed time.Duration
	if !ob.start.IsZero() {
		elapsed = time.Since(ob.start)
	}
	mctx := ctx
	if ob.ctx != nil {
		mctx = ob.ctx
	}
	if o.decisions.Enabled(mctx) {
		o.decisions.Add(mctx, 1, o.decisionAttrs(ob.route, outcome, reason)...)
	}
	if ob.waited > 0 && o.waitDur.Enabled(mctx) {
		o.waitDur.Record(mctx, ob.waited.Seconds(), o.waitAttrs(outcome)...)
	}
	if span := ob.span; span.IsRecording() {
		attrs := make([]attribute.KeyValue, 0, 4)
		attrs = append(attrs, attrOutcome.String(outcome), attrRoute.String(ob.route))
		if ob.keyHash != "" {
			attrs = append(attrs, attrKeyHash.String(ob.keyHash))
		}
		if reason != "" {
			attrs = append(attrs, attrReason.String(reason))
		}
		span.AddEvent("idempotency.decision", trace.WithAttributes(attrs...))
		span.SetAttributes(attrs[0])
		if reason != "" {
			span.SetAttributes(attrReason.String(reason))
		}
	}
	if o.hook != nil {
		o.hook(ctx, Decision{
			Outcome: outcome,
			Reason:  reason,
			Route:   ob.route,
			KeyHash: ob.keyHash,
			Store:   ob.store,
			Wait:    ob.waited,
			Decide:  ob.decide,
			Elapsed: elapsed,
		})
	}
}

// decisionAttrs returns the attributes of one series of the decisions
// counter, built once per series.
func (o *observer) decisionAttrs(route, outcome, reason string) []metric.AddOption {
	k := decisionKey{route, outcome, reason}
	o.mu.RLock()
	opt, ok := o.counted[k]
	full := len(o.counted) >= maxSeries
	o.mu.RUnlock()
	if ok {
		return opt
	}
	if full {
		k.route = "_OTHER"
		o.mu.RLock()
		opt, ok = o.counted[k]
		o.mu.RUnlock()
		if ok {
			return opt
		}
	}
	attrs := []attribute.KeyValue{attrOutcome.String(outcome), attrRoute.String(k.route)}
	if reason != "" {
		attrs = append(attrs, attrReason.String(reason))
	}
	opt = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attrs...))}
	o.mu.Lock()
	if len(o.counted) < maxSeries || k.route == "_OTHER" {
		o.counted[k] = opt
	}
	o.mu.Unlock()
	return opt
}

// waitAttrs returns the attributes of the wait histogram for outcome.
func (o *observer) waitAttrs(outcome string) []metric.RecordOption {
	o.mu.RLock()
	opt, ok := o.waitOpts[outcome]
	o.mu.RUnlock()
	if ok {
		return opt
	}
	opt = recordOptions(attrOutcome.String(outcome))
	o.mu.Lock()
	if len(o.waitOpts) < maxSeries {
		o.waitOpts[outcome] = opt
	}
	o.mu.Unlock()
	return opt
}

func recordOptions(attrs ...attribute.KeyValue) []metric.RecordOption {
	return []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(attrs...))}
}
