package idempotency

import (
	"context"
	"errors"
	"log/slog"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
)

// Interceptor is a Connect interceptor that makes unary procedures
// idempotent on the handler side: the first call with a key runs the
// handler, and every retry with the same key gets the stored response (or
// the stored error) back, without running the handler again. Create it with
// [NewInterceptor] and pass it to a handler constructor with
// [connect.WithInterceptors]. It is safe for concurrent use.
//
// It guards every unary procedure whose idempotency level is neither
// NO_SIDE_EFFECTS nor IDEMPOTENT, or the unary procedures that
// [WithProcedures] selects. Client-side calls, streaming calls and requests
// without a key pass through untouched and never reach the store (a request
// without a key is rejected under [WithRequireKey]). The options that only
// the middleware of package httpmw uses are ignored.
//
// The key names one request of one procedure (and of one caller, under
// [WithKeyScope]); its fingerprint hashes the procedure and the
// deterministic binary form of the request message, so the JSON and the
// binary encodings of one request are one request. What is stored is the
// outcome as the client sees it: the response message in protojson with its
// full name, or the handler's error (code, message, details and, unless it
// came from another server, metadata), and the response headers and
// trailers, including those set through [connect.CallInfoForHandlerContext],
// without protocol headers such as Content-Type and Grpc-*, hop-by-hop
// headers, and Set-Cookie or Authorization. A panic, a response over
// [WithMaxResponseSize], and an error returned because the request's
// context ended are not stored: the claim is released and a retry runs the
// handler again.
//
// The errors that the interceptor raises itself are [*connect.Error]s with
// the metadata entry [StatusHeader] (see [CodeOf] for their codes); an
// in-flight conflict also carries a Retry-After entry in whole seconds. On
// the server they unwrap to the sentinels of this package, such as
// [ErrInFlight], so errors.Is works on them.
//
// A replay reaches the interceptors outside this one, and the client, as a
// [*connect.Response] with the stored headers and trailers and the replay
// header (by default Idempotent-Replayed: true), or as a [*connect.Error]
// with the stored code, message, details and metadata and the replay header
// in its metadata. The client receives the same message it received the
// first time, on every protocol. An outer interceptor, however, does not see
// the generated type in a replayed response's Any(): the interceptor builds
// the message from the protobuf registry without knowing its Go type, so
// Any() returns a wrapper that implements [proto.Message] by delegating to
// the concrete message (a [dynamicpb] message for a type that only the
// procedure's schema knows). Every replay gets a message and header values
// of its own: an outer interceptor may edit them without changing what
// another replay sends. To reach the concrete message, use the wrapper's
// Unwrap method:
//
//	msg := res.Any()
//	if w, ok := msg.(interface{ Unwrap() proto.Message }); ok {
//		msg = w.Unwrap() // for example a *paymentsv1.ChargeResponse
//	}
type Interceptor struct {
	engine     *Engine
	cfg        *config // the engine's
	retryAfter string  // the in-flight hint, rendered once
}

var _ connect.Interceptor = (*Interceptor)(nil)

// NewInterceptor returns an interceptor over store, configured by opts. It
// panics if store is nil or an option cannot work.
func NewInterceptor(store Store, opts ...Option) *Interceptor {
	if store == nil {
		panic("idempotency: NewInterceptor: store must not be nil")
	}
	e := NewEngine(store, opts...)
	return &Interceptor{engine: e, cfg: e.cfg, retryAfter: e.retryAfter}
}

// WrapUnary guards the handler side of unary calls.
func (i *Interceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		spec := req.Spec()
		if spec.IsClient || !guards(i.cfg, spec) {
			return next(ctx, req)
		}
		return i.serve(ctx, req, next)
	}
}

// WrapStreamingClient returns next unchanged: streaming calls are not guarded.
func (i *Interceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler returns next unchanged: streaming calls are not guarded.
func (i *Interceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// guards reports whether a procedure is guarded, by the interceptor and by
// the client interceptor: by default, unary procedures that are not already
// safe to retry.
func guards(cfg *config, spec connect.Spec) bool {
	if spec.StreamType != connect.StreamTypeUnary {
		return false
	}
	if cfg.procedures != nil {
		return cfg.procedures(spec)
	}
	return cfg.guardsProcedure(spec.Procedure, spec.IdempotencyLevel == connect.IdempotencyNoSideEffects ||
		spec.IdempotencyLevel == connect.IdempotencyIdempotent)
}

func (i *Interceptor) serve(ctx context.Context, req connect.AnyRequest, next connect.UnaryFunc) (connect.AnyResponse, error) {
	key, err := i.engine.Key(req.Header())
	if err != nil {
		i.engine.Rejected(ctx, req.Spec().Procedure, err)
		return nil, i.libraryError(err)
	}
	if key == "" {
		if i.cfg.requireKey {
			i.engine.Rejected(ctx, req.Spec().Procedure, ErrKeyRequired)
			return nil, i.libraryError(ErrKeyRequired)
		}
		return next(ctx, req)
	}
	msg, ok := req.Any().(proto.Message)
	if !ok {
		// Without a protobuf message there is neither a deterministic
		// fingerprint nor a way to store the response; refusing the call
		// would break a working service, so it runs unguarded.
		i.cfg.logger.LogAttrs(ctx, slog.LevelWarn, "idempotency: request is not a protobuf message; running it unguarded",
			slog.String("procedure", req.Spec().Procedure))
		return next(ctx, req)
	}
	procedure := req.Spec().Procedure
	r := Request{
		Scope: i.engine.ScopeOf(ctx, req.Header()),
		Route: procedure,
		Key:   key,
	}
	if i.cfg.fingerprint {
		if r.Fingerprint, err = FingerprintMessage(procedure, msg); err != nil {
			i.engine.Rejected(ctx, procedure, err)
			return nil, connect.NewError(connect.CodeInvalidArgument, err)
		}
	}
	exec, rec, err := i.engine.Begin(ctx, r)
	switch {
	case err != nil:
		return nil, i.libraryError(err)
	case rec != nil:
		return i.replay(ctx, req.Spec(), &r, rec)
	case !exec.Protected():
		return next(ctx, req)
	}
	return i.execute(ctx, req, next, exec)
}

// execute runs the handler under the claim and records its outcome before
// returning it.
func (i *Interceptor) execute(ctx context.Context, req connect.AnyRequest, next connect.UnaryFunc, exec *Execution) (connect.AnyResponse, error) {
	returned := false
	defer func() {
		// A panic, or runtime.Goexit, leaves nothing to store: release the
		// claim so that a retry runs again, and let the panic go on with
		// its stack intact.
		if !returned {
			_ = exec.Skip(ReasonPanic)
		}
	}()
	res, err := next(exec.Context(ctx), req)
	returned = true

	// Complete and Skip log their failures.
	info, _ := connect.CallInfoForHandlerContext(ctx)
	var cErr error
	switch {
	case err != nil && HandlerGaveUp(ctx, err, uint32(connect.CodeOf(err))):
		_ = exec.Skip(ReasonContextEnded)
	case err != nil:
		rec := i.errorRecord(info, err)
		cErr = exec.Complete(&rec)
	default:
		msg, ok := anyMessage(res)
		if !ok {
			_ = exec.Skip(ReasonNotEncodable)
			break
		}
		// connect-go sends the headers and trailers set through the call
		// info first, then those of the response; the client sees both.
		var rec Record
		if info != nil {
			rec.Header = i.engine.AppendMetadata(rec.Header, info.ResponseHeader())
			rec.Trailer = i.engine.AppendMetadata(rec.Trailer, info.ResponseTrailer())
		}
		rec.Header = i.engine.AppendMetadata(rec.Header, res.Header())
		rec.Trailer = i.engine.AppendMetadata(rec.Trailer, res.Trailer())
		cErr = exec.CompleteMessage(&rec, msg)
	}
	// The client gets its answer regardless, unless the answer describes
	// writes in the handler's transaction that were rolled back.
	if errors.Is(cErr, ErrNotCommitted) {
		return nil, i.libraryError(cErr)
	}
	return res, err
}

// anyMessage returns a response's message, if it has a protobuf one.
func anyMessage(res connect.AnyResponse) (proto.Message, bool) {
	if res == nil {
		return nil, false
	}
	msg, ok := res.Any().(proto.Message)
	return msg, ok && msg != nil
}

// errorRecord builds the record of a handler error: the headers and
// trailers set through the call info in Header and Trailer, and the
// error's own metadata apart, because the protocols send the two in
// different places (on gRPC, the metadata of an error goes in the
// trailers).
func (i *Interceptor) errorRecord(info connect.CallInfo, err error) Record {
	e := &ErrorRecord{Code: uint32(connect.CodeUnknown), Message: err.Error()}
	rec := Record{Error: e}
	if info != nil {
		rec.Header = i.engine.AppendMetadata(rec.Header, info.ResponseHeader())
		rec.Trailer = i.engine.AppendMetadata(rec.Trailer, info.ResponseTrailer())
	}
	var ce *connect.Error
	switch {
	case errors.As(err, &ce) && ce != nil:
		e.Code = uint32(ce.Code())
		e.Message = ce.Message()
		for _, d := range ce.Details() {
			e.Details = append(e.Details, ErrorDetail{Type: d.Type(), Value: d.Bytes()})
		}
		// connect-go drops the metadata of an error that came from another
		// server, so its client never sees it.
		if !connect.IsWireError(ce) {
			e.Meta = i.engine.AppendMetadata(nil, ce.Meta())
		}
	case errors.Is(err, context.Canceled):
		e.Code = uint32(connect.CodeCanceled)
	case errors.Is(err, context.DeadlineExceeded):
		e.Code = uint32(connect.CodeDeadlineExceeded)
	}
	return rec
}

// libraryError turns one of the package's errors into what the client
// gets: a [*connect.Error] whose message says what to fix and whose
// metadata carries [StatusHeader]. It unwraps to err, but its message never
// shows err's causes, which may describe the store's internals.
func (i *Interceptor) libraryError(err error) *connect.Error {
	code, label, ok := CodeOf(err)
	if !ok {
		code = connect.CodeInternal
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return connect.NewError(code, err)
	}
	ce := connect.NewError(code, &clientError{msg: i.engine.ErrorMessage(err), err: err})
	if label != "" {
		ce.Meta().Set(StatusHeader, label)
	}
	if label == StatusInFlight {
		ce.Meta().Set("Retry-After", i.retryAfter)
	}
	return ce
}

// clientError carries the message a client is shown, while unwrapping to
// the error the library raised.
type clientError struct {
	msg string
	err error
}

func (e *clientError) Error() string { return e.msg }
func (e *clientError) Unwrap() error { return e.err }
