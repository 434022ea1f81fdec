package grpcmw

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/internal/protorec"
)

const retryAfterHeader = "Retry-After"

// server is the state of one [UnaryServerInterceptor].
type server struct {
	engine   *idempotency.Engine
	settings idempotency.Settings
	methods  methods
	// The metadata keys, in the lower case that gRPC uses.
	keyMD, gatewayKeyMD, replayMD string
	statusMD, retryAfterMD        string
	retryAfter                    string
}

// UnaryServerInterceptor returns a grpc-go interceptor that makes unary
// methods idempotent over store, configured by opts (the options that only
// the Connect interceptors or package httpmw read are ignored). It panics if
// store is nil or an option cannot work. Install it with
// [grpc.ChainUnaryInterceptor]; it is safe for concurrent use.
//
// It guards every method whose idempotency level, as the global protobuf
// registry describes it, is neither NO_SIDE_EFFECTS nor IDEMPOTENT, or the
// methods [idempotency.WithProcedureFilter] selects. A call without a key
// passes through (it is refused under [idempotency.WithRequireKey]).
//
// The key is the incoming metadata idempotency-key (or the name
// [idempotency.WithIdempotencyHeader] sets, in lower case), or the same
// name with grpc-gateway's prefix, grpcgateway-idempotency-key. The
// fingerprint hashes the method and the deterministic binary form of the
// request, so a REST JSON body with its fields in another order is the same
// request.
//
// What is stored is the answer as the client sees it: the response message
// (in protojson, with its full name), or the handler's status (code,
// message and details), and the header and trailer metadata the handler set
// with [grpc.SetHeader], [grpc.SendHeader] and [grpc.SetTrailer], without
// grpc-* entries, credentials and hop-by-hop headers. A replay returns a
// message of its own, of the registry's generated type, so the interceptors
// outside this one see what the handler returned; it sets the stored
// metadata with [grpc.SetHeader] and [grpc.SetTrailer] and adds the header
// idempotent-replayed: true.
//
// Its own refusals are statuses with the codes of [idempotency.CodeOf] and
// the message of [idempotency.Engine.ErrorMessage], and carry the header
// metadata idempotency-status (and retry-after, in whole seconds, for a call
// in flight), where both grpc-go clients ([grpc.Header]) and grpc-gateway
// see them. On the server they unwrap to the package's sentinels, such as
// [idempotency.ErrInFlight]. A handler's Unavailable status goes out with
// header metadata, so that [UnaryClientInterceptor] can tell it from a
// connection failure.
func UnaryServerInterceptor(store idempotency.Store, opts ...idempotency.Option) grpc.UnaryServerInterceptor {
	if store == nil {
		panic("grpcmw: UnaryServerInterceptor: store must not be nil")
	}
	e := idempotency.NewEngine(store, opts...)
	st := e.Settings()
	key := strings.ToLower(st.IdempotencyHeader)
	s := &server{
		engine:       e,
		settings:     st,
		keyMD:        key,
		gatewayKeyMD: gatewayPrefix + key,
		replayMD:     strings.ToLower(st.ReplayHeader),
		statusMD:     strings.ToLower(idempotency.StatusHeader),
		retryAfterMD: strings.ToLower(retryAfterHeader),
		retryAfter:   st.RetryAfterSeconds(),
	}
	return s.intercept
}

func (s *server) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	m := s.methods.lookup(info.FullMethod)
	if !s.engine.Guards(info.FullMethod, m.safe) {
		return handler(ctx, req)
	}
	key, err := idempotency.ParseKey(s.keyValues(ctx), s.settings.EnforceUUID4)
	if err != nil {
		s.engine.Rejected(ctx, info.FullMethod, err)
		return nil, s.libraryError(ctx, err)
	}
	if key == "" {
		if s.settings.RequireKey {
			s.engine.Rejected(ctx, info.FullMethod, idempotency.ErrKeyRequired)
			return nil, s.libraryError(ctx, idempotency.ErrKeyRequired)
		}
		return handler(ctx, req)
	}
	msg, ok := req.(proto.Message)
	if !ok {
		// Without a protobuf message there is neither a fingerprint nor a
		// way to store the response; refusing the call would break a
		// working service, so it runs unguarded.
		s.settings.Logger.LogAttrs(ctx, slog.LevelWarn, "idempotency: request is not a protobuf message; running it unguarded",
			slog.String("procedure", info.FullMethod))
		return handler(ctx, req)
	}
	r := idempotency.Request{Route: info.FullMethod, Key: key}
	if s.settings.KeyScope != nil {
		md, _ := metadata.FromIncomingContext(ctx)
		r.Scope = s.engine.ScopeOf(ctx, httpHeader(nil, md))
	}
	if s.settings.Fingerprint {
		if r.Fingerprint, err = idempotency.FingerprintMessage(info.FullMethod, msg); err != nil {
			s.engine.Rejected(ctx, info.FullMethod, err)
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	exec, rec, err := s.engine.Begin(ctx, r)
	switch {
	case err != nil:
		return nil, s.libraryError(ctx, err)
	case rec != nil:
		return s.replay(ctx, info.FullMethod, m, &r, rec)
	case !exec.Protected():
		return handler(ctx, req)
	}
	return s.execute(ctx, req, handler, exec)
}

// keyValues returns the values of the key metadata, under its own name and
// under grpc-gateway's prefix: more than one value is an invalid key.
func (s *server) keyValues(ctx context.Context) []string {
	// Two look-ups copy two slices, where the whole metadata would be
	// copied by metadata.FromIncomingContext.
	vs := metadata.ValueFromIncomingContext(ctx, s.keyMD)
	if gw := metadata.ValueFromIncomingContext(ctx, s.gatewayKeyMD); len(gw) > 0 {
		vs = append(vs, gw...)
	}
	return vs
}

// execute runs the handler under the claim, with a transport stream that
// records the metadata the handler sets, and stores its outcome before
// returning it.
func (s *server) execute(ctx context.Context, req any, handler grpc.UnaryHandler, exec *idempotency.Execution) (any, error) {
	rs := &recordingStream{inner: grpc.ServerTransportStreamFromContext(ctx)}
	returned := false
	defer func() {
		// A panic, or runtime.Goexit, leaves nothing to store: release the
		// claim so that a retry runs again, and let the panic go on.
		if !returned {
			_ = exec.Skip(idempotency.ReasonPanic)
		}
	}()
	res, err := handler(grpc.NewContextWithServerTransportStream(exec.Context(ctx), rs), req)
	returned = true

	// Complete and Skip log their failures; the client gets its answer
	// regardless.
	header, trailer := rs.recorded()
	var cErr error
	switch {
	case err != nil && idempotency.HandlerGaveUp(ctx, err, uint32(status.Code(err))):
		_ = exec.Skip(idempotency.ReasonContextEnded)
	case err != nil:
		rec, ok := s.errorRecord(err, header, trailer)
		if !ok {
			_ = exec.Skip(idempotency.ReasonNotEncodable)
			break
		}
		cErr = exec.Complete(&rec)
	default:
		msg, ok := res.(proto.Message)
		if !ok || msg == nil {
			_ = exec.Skip(idempotency.ReasonNotEncodable)
			break
		}
		rec := idempotency.Record{
			Header:  s.engine.AppendMetadata(nil, httpHeader(nil, header)),
			Trailer: s.engine.AppendMetadata(nil, httpHeader(nil, trailer)),
		}
		cErr = exec.CompleteMessage(&rec, msg)
	}
	if errors.Is(cErr, idempotency.ErrNotCommitted) {
		// The handler's writes in its transaction were rolled back: its
		// answer describes work that did not happen.
		return nil, s.libraryError(ctx, cErr)
	}
	if err != nil && status.Code(err) == codes.Unavailable {
		// Headers make the answer more than a trailers-only response, which
		// is how a client tells a handler's Unavailable from a connection
		// that failed before any answer (see UnaryClientInterceptor).
		_ = grpc.SendHeader(ctx, metadata.MD{})
	}
	return res, err
}

// errorRecord builds the record of a handler error, as grpc-go sends it: a
// status, or for any other error Unknown with the error's text.
func (s *server) errorRecord(err error, header, trailer metadata.MD) (idempotency.Record, bool) {
	st, ok := status.FromError(err)
	if !ok {
		st = status.FromContextError(err)
	}
	if st.Code() == codes.OK {
		return idempotency.Record{}, false
	}
	e := &idempotency.ErrorRecord{Code: uint32(st.Code()), Message: st.Message()}
	for _, d := range st.Proto().GetDetails() {
		e.Details = append(e.Details, idempotency.ErrorDetail{Type: typeName(d.GetTypeUrl()), Value: d.GetValue()})
	}
	return idempotency.Record{
		Header:  s.engine.AppendMetadata(nil, httpHeader(nil, header)),
		Trailer: s.engine.AppendMetadata(nil, httpHeader(nil, trailer)),
		Error:   e,
	}, true
}

// typeName is a type URL without its prefix, as records keep it.
func typeName(url string) string {
	if i := strings.LastIndexByte(url, '/'); i >= 0 {
		return url[i+1:]
	}
	return url
}

// replay answers a call from a stored record: the response message or the
// stored status, with the stored metadata and the replay marker. A record
// that cannot be turned back into either is logged and answered as a store
// failure.
func (s *server) replay(ctx context.Context, fullMethod string, m *method, r *idempotency.Request, rec *idempotency.Record) (any, error) {
	var err error
	if rec.Error != nil {
		var st *status.Status
		if st, err = replayedStatus(rec.Error); err == nil {
			s.sendRecorded(ctx, rec)
			return nil, st.Err()
		}
	} else {
		var msg proto.Message
		if msg, err = rec.ResponseMessage(m.output); err == nil {
			s.sendRecorded(ctx, rec)
			return msg, nil
		}
	}
	s.settings.Logger.LogAttrs(ctx, slog.LevelError, "idempotency: stored response cannot be replayed",
		slog.String("key_hash", idempotency.StorageKey(r.Scope, r.Route, r.Key)[:12]),
		slog.String("procedure", fullMethod), slog.Any("error", err))
	return nil, s.libraryError(ctx, fmt.Errorf("%w: %w", idempotency.ErrStoreUnavailable, err))
}

// replayedStatus rebuilds a stored status.
func replayedStatus(e *idempotency.ErrorRecord) (*status.Status, error) {
	if !protorec.ValidCode(e.Code) {
		return nil, fmt.Errorf("%w: error code %d", protorec.ErrCorrupt, e.Code)
	}
	p := status.New(codes.Code(e.Code), e.Message).Proto()
	for _, d := range e.Details {
		if d.Type == "" {
			return nil, fmt.Errorf("%w: error detail without a type", protorec.ErrCorrupt)
		}
		p.Details = append(p.Details, &anypb.Any{TypeUrl: "type.googleapis.com/" + d.Type, Value: d.Value})
	}
	return status.FromProto(p), nil
}

// sendRecorded sets a replay's metadata: the stored headers and the replay
// marker as header metadata, the stored trailers (and a Connect error's own
// metadata, which Connect's gRPC protocol sends in the trailers) as trailer
// metadata. Every value is a copy: the record is shared with other replays.
func (s *server) sendRecorded(ctx context.Context, rec *idempotency.Record) {
	header := appendMD(metadata.MD{s.replayMD: {"true"}}, rec.Header)
	_ = grpc.SetHeader(ctx, header)
	trailer := appendMD(nil, rec.Trailer)
	if rec.Error != nil {
		trailer = appendMD(trailer, rec.Error.Meta)
	}
	if len(trailer) > 0 {
		_ = grpc.SetTrailer(ctx, trailer)
	}
}

// libraryError turns one of the package's errors into a status with the
// code of [idempotency.CodeOf] and the engine's message, and sets the
// idempotency-status (and retry-after) header metadata.
func (s *server) libraryError(ctx context.Context, err error) error {
	code, label, ok := idempotency.CodeOf(err)
	if !ok {
		code = 13 // internal
	}
	if label != "" {
		md := metadata.MD{s.statusMD: {label}}
		if label == idempotency.StatusInFlight {
			md[s.retryAfterMD] = []string{s.retryAfter}
		}
		_ = grpc.SetHeader(ctx, md)
	}
	return &libraryError{st: status.New(codes.Code(code), s.engine.ErrorMessage(err)), err: err}
}

// libraryError is a status that unwraps to the error the library raised.
type libraryError struct {
	st  *status.Status
	err error
}

func (e *libraryError) Error() string              { return e.st.Err().Error() }
func (e *libraryError) GRPCStatus() *status.Status { return e.st }
func (e *libraryError) Unwrap() error              { return e.err }

// httpHeader appends metadata to an http.Header under canonical names, the
// form the record and the engine's filters use.
func httpHeader(dst http.Header, md metadata.MD) http.Header {
	for k, vs := range md {
		if len(vs) == 0 {
			continue
		}
		if dst == nil {
			dst = make(http.Header, len(md))
		}
		ck := http.CanonicalHeaderKey(k)
		dst[ck] = append(dst[ck], vs...)
	}
	return dst
}

// appendMD appends stored headers to metadata under lower-case names,
// leaving out those never replayed, even from a record another writer put
// in the store. Values are copied.
func appendMD(dst metadata.MD, h http.Header) metadata.MD {
	for k, vs := range h {
		if len(vs) == 0 || idempotency.NeverStored(http.CanonicalHeaderKey(k)) {
			continue
		}
		if dst == nil {
			dst = make(metadata.MD, len(h))
		}
		lk := strings.ToLower(k)
		dst[lk] = append(dst[lk][:len(dst[lk]):len(dst[lk])], vs...)
	}
	return dst
}
