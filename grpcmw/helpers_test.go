package grpcmw_test

import (
	"context"
	"net"
	"net/http/httptest"
	"testing"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/grpcmw"
	gatewayv1 "github.com/idemkey/idempotency/internal/gen/idemkey/gateway/v1"
	"github.com/idemkey/idempotency/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// chargeServer is a pluggable ChargeService: each RPC runs its function
// field.
type chargeServer struct {
	gatewayv1.UnimplementedChargeServiceServer
	create func(context.Context, *gatewayv1.CreateChargeRequest) (*gatewayv1.CreateChargeResponse, error)
	get    func(context.Context, *gatewayv1.GetChargeRequest) (*gatewayv1.GetChargeResponse, error)
}

func (s *chargeServer) CreateCharge(ctx context.Context, req *gatewayv1.CreateChargeRequest) (*gatewayv1.CreateChargeResponse, error) {
	return s.create(ctx, req)
}

func (s *chargeServer) GetCharge(ctx context.Context, req *gatewayv1.GetChargeRequest) (*gatewayv1.GetChargeResponse, error) {
	return s.get(ctx, req)
}

// startGRPC serves srv over an in-memory connection with the interceptor
// over store, and returns a client connection to it.
func startGRPC(t testing.TB, srv gatewayv1.ChargeServiceServer, store idempotency.Store, opts ...idempotency.Option) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer(grpc.ChainUnaryInterceptor(grpcmw.UnaryServerInterceptor(store, opts...)))
	gatewayv1.RegisterChargeServiceServer(s, srv)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return dialBuf(t, lis)
}

// dialBuf connects to lis, with the client interceptors given.
func dialBuf(t testing.TB, lis *bufconn.Listener, interceptors ...grpc.UnaryClientInterceptor) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(interceptors...))
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// startGateway serves a grpc-gateway mux, with the package's header
// matchers, in front of cc, and returns its URL.
func startGateway(t testing.TB, cc *grpc.ClientConn) string {
	t.Helper()
	mux := runtime.NewServeMux(
		runtime.WithIncomingHeaderMatcher(grpcmw.GatewayIncomingHeaderMatcher(runtime.DefaultHeaderMatcher)),
		runtime.WithOutgoingHeaderMatcher(grpcmw.GatewayOutgoingHeaderMatcher(nil)),
	)
	require.NoError(t, gatewayv1.RegisterChargeServiceHandlerClient(t.Context(), mux, gatewayv1.NewChargeServiceClient(cc)))
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return hs.URL
}

func created(c *gatewayv1.Charge) *gatewayv1.CreateChargeResponse {
	return &gatewayv1.CreateChargeResponse{Charge: c}
}

func found(c *gatewayv1.Charge) *gatewayv1.GetChargeResponse {
	return &gatewayv1.GetChargeResponse{Charge: c}
}
