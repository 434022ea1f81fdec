package connectv2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"sync"

	"connectrpc.com/connect/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	idempotency "github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/internal/protorec"
)

// NewServerInterceptor returns a connect-go v2 server interceptor over store,
// configured by opts, that makes unary procedures idempotent: the first call
// with a key runs the handler, and every retry with the same key gets the
// stored response (or the stored error) back without running the handler
// again. Pass it to [connect.NewServer]. It panics if store is nil or an
// option cannot work. It is safe for concurrent use.
//
// It guards every unary procedure whose idempotency level is neither
// NO_SIDE_EFFECTS nor IDEMPOTENT, or those that
// [idempotency.WithProcedureFilter] selects ([idempotency.WithProcedures]
// takes a v1 spec and is ignored). Streaming calls and calls without a key
// pass through untouched and never reach the store (a call without a key is
// rejected under [idempotency.WithRequireKey]).
//
// The key is the request header of the call's [connect.CallInfo]. To
// fingerprint the request before the handler runs, the interceptor receives
// the request message itself, built from the procedure's schema (the
// protobuf registry's type, else a dynamic message), and hands the handler
// a stream whose Receive gives a copy of it back. The fingerprint hashes the
// procedure and the deterministic binary form of the message, so the JSON
// and binary encodings of one request are one request. A procedure whose
// schema is not a protobuf method runs unguarded, with a warning.
//
// The response is recorded when the handler sends it, before it goes out:
// the message in protojson with its full name, and the response headers and
// trailers of the call info without protocol and credential headers. A
// handler error is recorded after the handler returns, as its client sees
// it: a [*connect.Error]'s code, message and details, an error from
// another server as CodeInternal without a message, any other error as
// CodeUnknown without a message (CodeCanceled, CodeDeadlineExceeded for the
// context's errors), with the headers and trailers the handler set. A
// panic, a response over [idempotency.WithMaxResponseSize], and an error
// returned because the request's context ended are not stored: the claim is
// released and a retry runs the handler again.
//
// A replay sets the stored headers and trailers in the call info and sends
// a message of its own, of the registry's type, through the stream that the
// outer interceptors gave this one, so they see it in Send; a replayed error
// is returned as a new [*connect.Error]. The library's own errors are
// [*connect.Error]s whose message says what to fix; they unwrap to the
// sentinels of package idempotency, such as [idempotency.ErrInFlight]. Where
// their metadata goes is described in the package documentation.
//
// Interceptors run in the order given to [connect.NewServer], the first
// outermost. What the interceptors after this one answer is recorded as the
// handler's answer, so put those that reject a call for a reason a retry
// may fix, such as authentication, before it.
func NewServerInterceptor(store idempotency.Store, opts ...idempotency.Option) connect.ServerInterceptor {
	if store == nil {
		panic("connectv2: NewServerInterceptor: store must not be nil")
	}
	e := idempotency.NewEngine(store, opts...)
	s := &server{engine: e, set: e.Settings()}
	s.retryAfter = s.set.RetryAfterSeconds()
	return s.intercept
}

type server struct {
	engine     *idempotency.Engine
	set        idempotency.Settings
	retryAfter string
	// inputs caches the request message type of each guarded procedure.
	inputs sync.Map // procedure string -> protoreflect.MessageType
}

func (s *server) intercept(next connect.ServerFunc) connect.ServerFunc {
	return func(ctx context.Context, spec connect.Spec, stream connect.ServerStream) error {
		if spec.StreamType != connect.StreamTypeUnary || !s.engine.Guards(spec.Procedure, safe(spec.IdempotencyLevel)) {
			return next(ctx, spec, stream)
		}
		info, ok := connect.CallInfoForServerContext(ctx)
		if !ok {
			// Not served through connect.Server.Call: there are no headers,
			// so there is no key.
			return next(ctx, spec, stream)
		}
		return s.serve(ctx, spec, info, stream, next)
	}
}

// safe reports whether a procedure is safe to retry without a key.
func safe(level connect.IdempotencyLevel) bool {
	return level == connect.IdempotencyNoSideEffects || level == connect.IdempotencyIdempotent
}

func (s *server) serve(ctx context.Context, spec connect.Spec, info *connect.CallInfo, stream connect.ServerStream, next connect.ServerFunc) error {
	key, err := idempotency.ParseKey(info.RequestHeader().Values(s.set.IdempotencyHeader), s.set.EnforceUUID4)
	if err != nil {
		s.engine.Rejected(ctx, spec.Procedure, err)
		return s.libraryError(info, err)
	}
	if key == "" {
		if s.set.RequireKey {
			s.engine.Rejected(ctx, spec.Procedure, idempotency.ErrKeyRequired)
			return s.libraryError(info, idempotency.ErrKeyRequired)
		}
		return next(ctx, spec, stream)
	}
	input := s.inputType(spec)
	if input == nil {
		s.set.Logger.LogAttrs(ctx, slog.LevelWarn, "idempotency: procedure has no protobuf schema; running it unguarded",
			slog.String("procedure", spec.Procedure))
		return next(ctx, spec, stream)
	}
	req := input.New().Interface()
	if err := stream.Receive(req); err != nil {
		return err
	}
	r := idempotency.Request{Route: spec.Procedure, Key: key}
	if s.set.KeyScope != nil {
		r.Scope = s.set.KeyScope(ctx, httpHeader(info.RequestHeader()))
	}
	if s.set.Fingerprint {
		if r.Fingerprint, err = idempotency.FingerprintMessage(spec.Procedure, req); err != nil {
			s.engine.Rejected(ctx, spec.Procedure, err)
			return connect.NewError(connect.CodeInvalidArgument, "idempotency: the request cannot be fingerprinted").WithCause(err)
		}
	}
	exec, rec, err := s.engine.Begin(ctx, r)
	switch {
	case err != nil:
		return s.libraryError(info, err)
	case rec != nil:
		return s.replay(ctx, spec, info, stream, &r, rec)
	case !exec.Protected():
		return next(ctx, spec, &requestStream{ServerStream: stream, req: req})
	}
	return s.execute(ctx, spec, info, stream, req, next, exec)
}

// inputType returns the request message type of a procedure: the protobuf
// registry's, else a dynamic type over the procedure's schema; nil without
// a protobuf schema.
func (s *server) inputType(spec connect.Spec) protoreflect.MessageType {
	if t, ok := s.inputs.Load(spec.Procedure); ok {
		return t.(protoreflect.MessageType)
	}
	md, ok := spec.Schema.(protoreflect.MethodDescriptor)
	if !ok {
		return nil
	}
	in := md.Input()
	t, err := protoregistry.GlobalTypes.FindMessageByName(in.FullName())
	if err != nil || t.Descriptor() != in {
		// Not registered, or a schema loaded at run time: a dynamic message
		// of the procedure's own descriptor.
		t = dynamicpb.NewMessageType(in)
	}
	s.inputs.Store(spec.Procedure, t)
	return t
}

// requestStream hands the handler the request that the interceptor
// received for it.
type requestStream struct {
	connect.ServerStream
	req proto.Message
}

// Receive copies the request into dst once, then reports the end of the
// requests, as a unary stream does.
func (s *requestStream) Receive(dst any) error {
	if s.req == nil {
		return io.EOF
	}
	src := s.req
	s.req = nil
	m, ok := dst.(proto.Message)
	if !ok {
		return connect.Errorf(connect.CodeInternal, "connectv2: cannot receive a request into %T", dst)
	}
	if m.ProtoReflect().Descriptor() == src.ProtoReflect().Descriptor() {
		proto.Reset(m)
		proto.Merge(m, src)
		return nil
	}
	// Another descriptor of the same message (a handler over a schema of
	// its own): through the binary form.
	b, err := proto.Marshal(src)
	if err == nil {
		err = proto.Unmarshal(b, m)
	}
	if err != nil {
		return connect.Errorf(connect.CodeInternal, "connectv2: cannot receive the request into %T", dst).WithCause(err)
	}
	return nil
}

// recordingStream records the response when the handler sends it, before
// it goes out, so that a retry arriving right after the answer finds it.
type recordingStream struct {
	requestStream
	s    *server
	info *connect.CallInfo
	exec *idempotency.Execution
	sent bool
}

func (r *recordingStream) Send(msg any) error {
	if !r.sent {
		r.sent = true
		if m, ok := msg.(proto.Message); ok && m != nil {
			rec := idempotency.Record{
				Header:  r.s.engine.AppendMetadata(nil, httpHeader(r.info.ResponseHeader())),
				Trailer: r.s.engine.AppendMetadata(nil, httpHeader(r.info.ResponseTrailer())),
			}
			// CompleteMessage logs its failures; the client gets its answer
			// regardless, unless it describes writes in the handler's
			// transaction that were rolled back.
			if err := r.exec.CompleteMessage(&rec, m); errors.Is(err, idempotency.ErrNotCommitted) {
				return r.s.libraryError(r.info, err)
			}
		} else {
			_ = r.exec.Skip(idempotency.ReasonNotEncodable)
		}
	}
	return r.requestStream.Send(msg)
}

// execute runs the handler under the claim and records its outcome.
func (s *server) execute(ctx context.Context, spec connect.Spec, info *connect.CallInfo, stream connect.ServerStream, req proto.Message,
	next connect.ServerFunc, exec *idempotency.Execution,
) error {
	returned := false
	defer func() {
		// A panic, or runtime.Goexit, leaves nothing to store: release the
		// claim so that a retry runs again, and let the panic go on.
		if !returned {
			_ = exec.Skip(idempotency.ReasonPanic)
		}
	}()
	rs := &recordingStream{requestStream: requestStream{ServerStream: stream, req: req}, s: s, info: info, exec: exec}
	err := next(exec.Context(ctx), spec, rs)
	returned = true
	switch {
	case rs.sent:
		// Recorded when it was sent; an error after that (the client went
		// away while the response was written) changes nothing.
	case err != nil && idempotency.HandlerGaveUp(ctx, err, uint32(connect.CodeOf(err))):
		_ = exec.Skip(idempotency.ReasonContextEnded)
	case err != nil:
		rec := s.errorRecord(info, err)
		if cErr := exec.Complete(&rec); errors.Is(cErr, idempotency.ErrNotCommitted) {
			return s.libraryError(info, cErr)
		}
	default:
		// A unary handler that returned without a response: the transport
		// answers with an error of its own.
		_ = exec.Skip(idempotency.ReasonNotEncodable)
	}
	return err
}

// errorRecord builds the record of a handler error as the client sees it:
// connect-go v2 sends only a local [*connect.Error]'s code, message and
// details, and a bare code for anything else.
func (s *server) errorRecord(info *connect.CallInfo, err error) idempotency.Record {
	e := &idempotency.ErrorRecord{Code: uint32(connect.CodeUnknown)}
	rec := idempotency.Record{
		Error:   e,
		Header:  s.engine.AppendMetadata(nil, httpHeader(info.ResponseHeader())),
		Trailer: s.engine.AppendMetadata(nil, httpHeader(info.ResponseTrailer())),
	}
	ce, ok := errors.AsType[*connect.Error](err)
	switch {
	case ok && ce != nil && ce.IsRemote():
		// Another server's verdict: the transport answers it as an
		// internal error without a message.
		e.Code = uint32(connect.CodeInternal)
	case ok && ce != nil:
		e.Code = uint32(ce.Code())
		e.Message = ce.Message()
		for _, d := range ce.Details() {
			if d != nil {
				e.Details = append(e.Details, idempotency.ErrorDetail{Type: d.Type, Value: d.Value})
			}
		}
	case errors.Is(err, context.Canceled):
		e.Code = uint32(connect.CodeCanceled)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		e.Code = uint32(connect.CodeDeadlineExceeded)
	}
	return rec
}

// replay answers a call from a stored record, as the handler first did. A
// record that cannot be replayed is logged and answered as a store failure.
func (s *server) replay(ctx context.Context, spec connect.Spec, info *connect.CallInfo, stream connect.ServerStream,
	req *idempotency.Request, rec *idempotency.Record,
) error {
	var (
		msg proto.Message
		ce  *connect.Error
		err error
	)
	if rec.Error != nil {
		ce, err = replayedError(rec.Error)
	} else {
		var output protoreflect.MessageDescriptor
		if md, ok := spec.Schema.(protoreflect.MethodDescriptor); ok {
			output = md.Output()
		}
		msg, err = rec.ResponseMessage(output)
	}
	if err != nil {
		s.set.Logger.LogAttrs(ctx, slog.LevelError, "idempotency: stored response cannot be replayed",
			slog.String("key_hash", keyHash(req)), slog.String("procedure", spec.Procedure), slog.Any("error", err))
		return s.libraryError(info, fmt.Errorf("%w: %w", idempotency.ErrStoreUnavailable, err))
	}
	copyHeader(info.ResponseHeader(), rec.Header)
	copyHeader(info.ResponseTrailer(), rec.Trailer)
	if ce != nil {
		// A v1 server's record keeps its error's own metadata apart; v1
		// sends it where v2 puts error metadata.
		meta := errorMeta(info)
		copyHeader(meta, rec.Error.Meta)
		meta.SetValues(s.set.ReplayHeader, []string{"true"})
		return ce
	}
	info.ResponseHeader().SetValues(s.set.ReplayHeader, []string{"true"})
	return stream.Send(msg)
}

// keyHash is what logs show of a request's key: a prefix of its storage
// key's hash, never the key.
func keyHash(r *idempotency.Request) string {
	return idempotency.StorageKey(r.Scope, r.Route, r.Key)[:12]
}

// replayedError rebuilds a stored handler error.
func replayedError(e *idempotency.ErrorRecord) (*connect.Error, error) {
	if !protorec.ValidCode(e.Code) {
		return nil, fmt.Errorf("%w: error code %d", protorec.ErrCorrupt, e.Code)
	}
	ce := connect.NewError(connect.Code(e.Code), e.Message)
	for _, d := range e.Details {
		if d.Type == "" {
			return nil, fmt.Errorf("%w: error detail without a type", protorec.ErrCorrupt)
		}
		ce = ce.WithDetail(&connect.ErrorDetail{Type: d.Type, Value: slices.Clone(d.Value)})
	}
	return ce, nil
}

// errorMeta is where the metadata of an error goes: the trailers on gRPC and
// gRPC-Web, the headers otherwise, as connect-go v1 sends an error's
// metadata.
func errorMeta(info *connect.CallInfo) *connect.Header {
	switch info.Protocol {
	case connect.ProtocolNameGRPC, connect.ProtocolNameGRPCWeb:
		return info.ResponseTrailer()
	}
	return info.ResponseHeader()
}

// libraryError turns one of the package's errors into what the client
// gets: a [*connect.Error] whose message says what to fix, with
// [idempotency.StatusHeader] (and Retry-After for a key in flight) in the
// call's error metadata. It unwraps to err, but its message never shows
// err's causes, which may describe the store's internals.
func (s *server) libraryError(info *connect.CallInfo, err error) *connect.Error {
	code, label, ok := idempotency.CodeOf(err)
	if !ok {
		code = connectv1CodeInternal
	}
	ce := connect.NewError(connect.Code(code), s.engine.ErrorMessage(err)).WithCause(err)
	if label != "" {
		meta := errorMeta(info)
		meta.Set(idempotency.StatusHeader, label)
		if label == idempotency.StatusInFlight {
			meta.Set("Retry-After", s.retryAfter)
		}
	}
	return ce
}

// connectv1CodeInternal is CodeInternal in the code type of
// [idempotency.CodeOf]; Connect's codes are one set of numbers in v1 and v2.
const connectv1CodeInternal = 13

// httpHeader views a call info's header as an [http.Header] (connect-go v2
// canonicalizes keys as net/http does). The values are shared, not copied.
func httpHeader(h *connect.Header) http.Header {
	if h.Len() == 0 {
		return nil
	}
	out := make(http.Header, h.Len())
	for k, vs := range h.All() {
		out[k] = vs
	}
	return out
}

// copyHeader copies stored headers into a call info's, leaving out those
// that are never replayed, even from a record that another writer put in
// the store. The values are copied: the record is shared with other
// replays.
func copyHeader(dst *connect.Header, src http.Header) {
	for k, vs := range src {
		if len(vs) == 0 || idempotency.NeverStored(http.CanonicalHeaderKey(k)) {
			continue
		}
		dst.SetValues(k, append(slices.Clip(dst.Values(k)), vs...))
	}
}
