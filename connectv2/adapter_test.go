package connectv2_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"
	"connectrpc.com/connect/v2/connectinprocess"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/connectv2"
	"github.com/idemkey/idempotency/internal/adaptertest"
	"github.com/idemkey/idempotency/internal/gen/connectv2/idemkey/payments/v1/paymentsv1connect"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
)

// service is the payments service over a framework-neutral Charge handler.
type service struct {
	paymentsv1connect.UnimplementedPaymentServiceHandler
	charge adaptertest.Handler
}

func (s *service) Charge(ctx context.Context, req *paymentsv1.ChargeRequest) (*paymentsv1.ChargeResponse, error) {
	info, _ := connect.CallInfoForServerContext(ctx)
	res, err := s.charge(ctx, req, metadata{info})
	if f, ok := errors.AsType[*adaptertest.RPCError](err); ok {
		ce := connect.NewError(connect.Code(f.Code), f.Message)
		for _, d := range f.Details {
			ce = ce.WithDetail(&connect.ErrorDetail{Type: d.Type, Value: d.Value})
		}
		return nil, ce
	}
	return res, err
}

// metadata sets response metadata in a v2 call info.
type metadata struct{ info *connect.CallInfo }

func (m metadata) SetHeader(key string, values ...string) {
	m.info.ResponseHeader().SetValues(key, values)
}

func (m metadata) SetTrailer(key string, values ...string) {
	m.info.ResponseTrailer().SetValues(key, values)
}

// v2Protocols are the client configurations of the v2 adapter.
var v2Protocols = map[string][]connecthttp.Option{
	"connect+proto": nil,
	"connect+json":  {connecthttp.WithProtoJSON()},
	"grpc":          {connecthttp.WithGRPC()},
	"grpcweb":       {connecthttp.WithGRPCWeb()},
}

// v2Server is a started v2 server with its clients.
type v2Server struct {
	clients    map[string]paymentsv1connect.PaymentServiceClient
	url        string
	httpClient *http.Client
}

// startV2 serves svc on a connect-go v2 server with the interceptors, over
// HTTP/1.1 and HTTP/2 with TLS, and returns clients for every protocol and
// in process.
func startV2(t *testing.T, svc paymentsv1connect.PaymentServiceHandler, interceptors ...connect.ServerInterceptor) *v2Server {
	t.Helper()
	server := connect.NewServer(interceptors...)
	paymentsv1connect.RegisterPaymentServiceHandler(server, svc)
	hs := serveV2(t, server)
	s := &v2Server{clients: map[string]paymentsv1connect.PaymentServiceClient{
		"inprocess": paymentsv1connect.NewPaymentServiceClient(connect.NewClient(connectinprocess.New(server))),
	}}
	for name, opts := range v2Protocols {
		s.clients[name] = paymentsv1connect.NewPaymentServiceClient(connect.NewClient(connecthttp.NewTransport(hs.Client(), hs.URL, opts...)))
	}
	s.url, s.httpClient = hs.URL, hs.Client()
	return s
}

// serveV2 serves a v2 server over HTTP/1.1 and HTTP/2 with TLS until the
// test ends.
func serveV2(t *testing.T, server *connect.Server) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	connecthttp.Mount(mux, server)
	hs := httptest.NewUnstartedServer(mux)
	hs.EnableHTTP2 = true
	hs.StartTLS()
	t.Cleanup(hs.Close)
	return hs
}

func (s *v2Server) Call(ctx context.Context, protocol string, keys []string, req *paymentsv1.ChargeRequest) adaptertest.Result {
	ctx, info := connect.NewClientContext(ctx)
	for _, k := range keys {
		info.RequestHeader().Add(idempotency.DefaultIdempotencyHeader, k)
	}
	res, err := s.clients[protocol].Charge(ctx, req)
	return v2Result(info, res, err)
}

// v2Result is what a v2 client received.
func v2Result(info *connect.CallInfo, res *paymentsv1.ChargeResponse, err error) adaptertest.Result {
	r := adaptertest.Result{Msg: res, Header: httpHeader(info.ResponseHeader()), Trailer: httpHeader(info.ResponseTrailer())}
	if err != nil {
		r.Err = &adaptertest.RPCError{Code: uint32(connect.CodeOf(err))}
		if ce, ok := errors.AsType[*connect.Error](err); ok {
			r.Err.Message = ce.Message()
			for _, d := range ce.Details() {
				r.Err.Details = append(r.Err.Details, adaptertest.Detail{Type: d.Type, Value: d.Value})
			}
		}
	}
	return r
}

func httpHeader(h *connect.Header) http.Header {
	out := http.Header{}
	for k, vs := range h.All() {
		out[k] = vs
	}
	return out
}

// v2Adapter runs the behaviour suite against [connectv2.NewServerInterceptor].
var v2Adapter = adaptertest.Adapter{
	Name:      "connect-go v2",
	Protocols: []string{"connect+json", "connect+proto", "grpc", "grpcweb", "inprocess"},
	Start: func(t *testing.T, h adaptertest.Handler, store idempotency.Store, opts ...idempotency.Option) adaptertest.Server {
		return startV2(t, &service{charge: h}, connectv2.NewServerInterceptor(store, opts...))
	},
}

func TestServerInterceptorBehaviour(t *testing.T) {
	t.Parallel()
	adaptertest.Run(t, v2Adapter)
}
