package grpcmw_test

import (
	"context"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"

	"github.com/idemkey/idempotency/grpcmw"
	gatewayv1 "github.com/idemkey/idempotency/internal/gen/idemkey/gateway/v1"
	"github.com/idemkey/idempotency/store/memory"
)

type exampleCharges struct {
	gatewayv1.UnimplementedChargeServiceServer
	calls int
}

func (s *exampleCharges) CreateCharge(_ context.Context, req *gatewayv1.CreateChargeRequest) (*gatewayv1.CreateChargeResponse, error) {
	s.calls++
	return &gatewayv1.CreateChargeResponse{Charge: &gatewayv1.Charge{Id: "ch_1", AmountCents: req.GetAmountCents()}}, nil
}

func Example() {
	// The server: the interceptor guards CreateCharge, whose idempotency
	// level is the default.
	svc := &exampleCharges{}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(grpcmw.UnaryServerInterceptor(memory.New())))
	gatewayv1.RegisterChargeServiceServer(srv, svc)
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	// The client sends the key as metadata; UnaryClientInterceptor would
	// set one for every call.
	conn, err := grpc.NewClient("passthrough:///example",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	client := gatewayv1.NewChargeServiceClient(conn)

	ctx := metadata.AppendToOutgoingContext(context.Background(), "idempotency-key", "charge-42")
	for range 2 {
		var header metadata.MD
		res, err := client.CreateCharge(ctx, &gatewayv1.CreateChargeRequest{AmountCents: 1200}, grpc.Header(&header))
		if err != nil {
			panic(err)
		}
		fmt.Println(res.GetCharge().GetId(), header.Get("idempotent-replayed"))
	}
	fmt.Println("handler calls:", svc.calls)
	// Output:
	// ch_1 []
	// ch_1 [true]
	// handler calls: 1
}
