package grpcmw_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/grpcmw"
	"github.com/idemkey/idempotency/internal/adaptertest"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
)

// grpcPayments is the payments service over a framework-neutral Charge
// handler.
type grpcPayments struct {
	paymentsv1.UnimplementedPaymentServiceServer
	charge adaptertest.Handler
}

func (s *grpcPayments) Charge(ctx context.Context, req *paymentsv1.ChargeRequest) (*paymentsv1.ChargeResponse, error) {
	res, err := s.charge(ctx, req, grpcMetadata{ctx})
	if f, ok := errors.AsType[*adaptertest.RPCError](err); ok {
		return nil, status.Error(codes.Code(f.Code), f.Message)
	}
	return res, err
}

// grpcMetadata sets response metadata through grpc-go's server context,
// whose keys are lower case.
type grpcMetadata struct{ ctx context.Context }

func (m grpcMetadata) SetHeader(key string, values ...string) {
	_ = grpc.SetHeader(m.ctx, metadata.MD{strings.ToLower(key): values})
}

func (m grpcMetadata) SetTrailer(key string, values ...string) {
	_ = grpc.SetTrailer(m.ctx, metadata.MD{strings.ToLower(key): values})
}

// recoverPanics turns a handler's panic into codes.Internal, as a
// production server's recovery interceptor does, outside the idempotency
// interceptor.
func recoverPanics(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (res any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = status.Error(codes.Internal, fmt.Sprint("panic: ", r))
		}
	}()
	return handler(ctx, req)
}

// grpcServer is a started payments server with its client.
type grpcServer struct {
	client paymentsv1.PaymentServiceClient
}

func (s grpcServer) Call(ctx context.Context, _ string, keys []string, req *paymentsv1.ChargeRequest) adaptertest.Result {
	for _, k := range keys {
		ctx = metadata.AppendToOutgoingContext(ctx, "idempotency-key", k)
	}
	var header, trailer metadata.MD
	res, err := s.client.Charge(ctx, req, grpc.Header(&header), grpc.Trailer(&trailer))
	r := adaptertest.Result{Msg: res, Header: httpHeader(header), Trailer: httpHeader(trailer)}
	if err != nil {
		st := status.Convert(err)
		r.Err = &adaptertest.RPCError{Code: uint32(st.Code()), Message: st.Message()}
	}
	return r
}

func httpHeader(md metadata.MD) http.Header {
	out := http.Header{}
	for k, vs := range md {
		out[http.CanonicalHeaderKey(k)] = vs
	}
	return out
}

// grpcAdapter starts grpc-go servers for the observability table of
// internal/adaptertest: the payments service over bufconn, behind
// [grpcmw.UnaryServerInterceptor]. Its errors carry no details.
var grpcAdapter = adaptertest.Adapter{
	Name:      "grpc-go",
	Protocols: []string{"grpc"},
	Start: func(t *testing.T, h adaptertest.Handler, store idempotency.Store, opts ...idempotency.Option) adaptertest.Server {
		lis := bufconn.Listen(1 << 20)
		s := grpc.NewServer(grpc.ChainUnaryInterceptor(recoverPanics, grpcmw.UnaryServerInterceptor(store, opts...)))
		paymentsv1.RegisterPaymentServiceServer(s, &grpcPayments{charge: h})
		go func() { _ = s.Serve(lis) }()
		t.Cleanup(s.Stop)
		return grpcServer{client: paymentsv1.NewPaymentServiceClient(dialBuf(t, lis))}
	},
}

func TestObservability(t *testing.T) {
	t.Parallel()
	adaptertest.RunObservability(t, grpcAdapter)
}
