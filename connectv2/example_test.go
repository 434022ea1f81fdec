package connectv2_test

import (
	"context"
	"fmt"
	"log"
	"sync/atomic"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connectinprocess"
	"github.com/google/uuid"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/connectv2"
	"github.com/idemkey/idempotency/internal/gen/connectv2/idemkey/payments/v1/paymentsv1connect"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/store/memory"
)

// payments charges accounts, counting the charges it makes.
type payments struct {
	paymentsv1connect.UnimplementedPaymentServiceHandler
	charges atomic.Int64
}

func (p *payments) Charge(ctx context.Context, req *paymentsv1.ChargeRequest) (*paymentsv1.ChargeResponse, error) {
	n := p.charges.Add(1)
	info, _ := connect.CallInfoForServerContext(ctx)
	info.ResponseHeader().Set("X-Ledger-Entry", fmt.Sprint(n))
	return &paymentsv1.ChargeResponse{ChargeId: fmt.Sprintf("ch_%d", n), Status: "succeeded", AmountCents: req.GetAmountCents()}, nil
}

// A connect-go v2 server guarded by the interceptor: the retry of a charge
// with the same key gets the first answer back, and the account is charged
// once. The server is served in process here; connecthttp.Mount serves it
// over HTTP alike.
func Example() {
	svc := &payments{}
	server := connect.NewServer(connectv2.NewServerInterceptor(memory.New()))
	paymentsv1connect.RegisterPaymentServiceHandler(server, svc)
	client := paymentsv1connect.NewPaymentServiceClient(connect.NewClient(connectinprocess.New(server)))

	key := "9b2f6b1e-0c1a-4d5e-8f3a-2b7c9d0e1f2a"
	for range 2 {
		ctx, info := connect.NewClientContext(context.Background())
		info.RequestHeader().Set(idempotency.DefaultIdempotencyHeader, key)
		res, err := client.Charge(ctx, &paymentsv1.ChargeRequest{AccountId: "acct_1", AmountCents: 1250})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(res.GetChargeId(), "ledger entry", info.ResponseHeader().Get("X-Ledger-Entry"),
			"replayed:", info.ResponseHeader().Get(idempotency.DefaultReplayHeader) == "true")
	}
	fmt.Println("charges made:", svc.charges.Load())
	// Output:
	// ch_1 ledger entry 1 replayed: false
	// ch_1 ledger entry 1 replayed: true
	// charges made: 1
}

// The client interceptor gives each mutating call a key of its own, a
// version 4 UUID, and keeps it for the call's retries; the caller's call
// info never gets it, so reusing the call info is a new call.
func ExampleNewClientInterceptor() {
	var keys []string
	server := connect.NewServer(func(next connect.ServerFunc) connect.ServerFunc {
		return func(ctx context.Context, spec connect.Spec, stream connect.ServerStream) error {
			info, _ := connect.CallInfoForServerContext(ctx)
			keys = append(keys, info.RequestHeader().Get(idempotency.DefaultIdempotencyHeader))
			return next(ctx, spec, stream)
		}
	}, connectv2.NewServerInterceptor(memory.New()))
	paymentsv1connect.RegisterPaymentServiceHandler(server, &payments{})
	client := paymentsv1connect.NewPaymentServiceClient(connect.NewClient(
		connectinprocess.New(server),
		connectv2.NewClientInterceptor(idempotency.WithMaxRetries(3)),
	))

	ctx, info := connect.NewClientContext(context.Background())
	for range 2 {
		res, err := client.Charge(ctx, &paymentsv1.ChargeRequest{AccountId: "acct_1", AmountCents: 1250})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(res.GetChargeId())
	}
	_, err0 := uuid.Parse(keys[0])
	fmt.Println("keys are UUIDs:", err0 == nil, "distinct:", keys[0] != keys[1])
	fmt.Println("key in the caller's headers:", info.RequestHeader().Get(idempotency.DefaultIdempotencyHeader) != "")
	// Output:
	// ch_1
	// ch_2
	// keys are UUIDs: true distinct: true
	// key in the caller's headers: false
}
