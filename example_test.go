package idempotency_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"

	"connectrpc.com/connect"

	"github.com/idemkey/idempotency"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1/paymentsv1connect"
	"github.com/idemkey/idempotency/store/memory"
)

// charges is a payments service that counts the charges it makes.
type charges struct {
	paymentsv1connect.UnimplementedPaymentServiceHandler
	made atomic.Int64
}

func (c *charges) Charge(_ context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
	n := c.made.Add(1)
	return connect.NewResponse(&paymentsv1.ChargeResponse{
		ChargeId:    "ch_" + strconv.FormatInt(n, 10),
		Status:      "succeeded",
		AmountCents: req.Msg.GetAmountCents(),
	}), nil
}

func ExampleNewInterceptor() {
	store := memory.New()
	defer store.Close()
	svc := &charges{}
	mux := http.NewServeMux()
	mux.Handle(paymentsv1connect.NewPaymentServiceHandler(svc,
		connect.WithInterceptors(idempotency.NewInterceptor(store)),
	))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	client := paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL)

	// A client sends a charge, then retries it with the same key, as it
	// would after a timeout.
	for range 2 {
		req := connect.NewRequest(&paymentsv1.ChargeRequest{AccountId: "acct_1", AmountCents: 1250, Currency: "EUR"})
		req.Header().Set("Idempotency-Key", "9b2f4c1e-2d4a-4f8e-9c53-6a1d2b7e0f31")
		res, err := client.Charge(context.Background(), req)
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Printf("%s %s, replayed: %q\n", res.Msg.GetChargeId(), res.Msg.GetStatus(), res.Header().Get("Idempotent-Replayed"))
	}
	fmt.Println("charges made:", svc.made.Load())
	// Output:
	// ch_1 succeeded, replayed: ""
	// ch_1 succeeded, replayed: "true"
	// charges made: 1
}

// A key reused for another request is rejected, and the error's metadata
// says that the library, not the handler, raised it.
func ExampleNewInterceptor_keyReused() {
	store := memory.New()
	defer store.Close()
	svc := &charges{}
	mux := http.NewServeMux()
	mux.Handle(paymentsv1connect.NewPaymentServiceHandler(svc,
		connect.WithInterceptors(idempotency.NewInterceptor(store)),
	))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	client := paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL)

	for _, amount := range []int64{1250, 9900} {
		req := connect.NewRequest(&paymentsv1.ChargeRequest{AccountId: "acct_1", AmountCents: amount, Currency: "EUR"})
		req.Header().Set("Idempotency-Key", "order-17")
		_, err := client.Charge(context.Background(), req)
		if err != nil {
			fmt.Println(connect.CodeOf(err))
			var ce *connect.Error
			if errors.As(err, &ce) {
				fmt.Println(idempotency.StatusHeader+":", ce.Meta().Get(idempotency.StatusHeader))
			}
			continue
		}
		fmt.Println("charged", amount)
	}
	fmt.Println("charges made:", svc.made.Load())
	// Output:
	// charged 1250
	// invalid_argument
	// Idempotency-Status: mismatch
	// charges made: 1
}
