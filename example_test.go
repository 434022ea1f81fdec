package idempotency_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/httpmw"
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

// answerLosingTransport loses the answer to the first request it sends, after the
// server has received it and run the handler, as a network that fails at
// the wrong moment does.
type answerLosingTransport struct {
	lost  atomic.Bool
	sends atomic.Int64
}

func (t *answerLosingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.sends.Add(1)
	res, err := http.DefaultTransport.RoundTrip(req)
	if err == nil && t.lost.CompareAndSwap(false, true) {
		_, _ = io.Copy(io.Discard, res.Body)
		_ = res.Body.Close()
		return nil, errors.New("connection reset by peer")
	}
	return res, err
}

// The client interceptor gives a call a key and retries it with the same
// key when the answer is lost: the server answers the retry from its store,
// and the charge is made once.
func ExampleNewClientInterceptor() {
	store := memory.New()
	defer store.Close()
	svc := &charges{}
	mux := http.NewServeMux()
	mux.Handle(paymentsv1connect.NewPaymentServiceHandler(svc,
		connect.WithInterceptors(idempotency.NewInterceptor(store)),
	))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	transport := &answerLosingTransport{}
	client := paymentsv1connect.NewPaymentServiceClient(&http.Client{Transport: transport}, srv.URL,
		connect.WithInterceptors(idempotency.NewClientInterceptor(
			idempotency.WithBackoff(10*time.Millisecond, 100*time.Millisecond),
		)),
	)
	res, err := client.Charge(context.Background(), connect.NewRequest(
		&paymentsv1.ChargeRequest{AccountId: "acct_1", AmountCents: 1250, Currency: "EUR"},
	))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s, replayed: %q\n", res.Msg.GetChargeId(), res.Header().Get("Idempotent-Replayed"))
	fmt.Println("requests sent:", transport.sends.Load())
	fmt.Println("charges made:", svc.made.Load())
	// Output:
	// ch_1, replayed: "true"
	// requests sent: 2
	// charges made: 1
}

// tenantKey is the context key under which an authentication middleware
// keeps the caller's tenant.
type tenantKey struct{}

// authenticate stands for real authentication: it takes the tenant from the
// bearer token, as checking an API key would.
func authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tenant := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), tenantKey{}, tenant)))
	})
}

// tenantOf returns the caller's tenant, which authenticate put in the
// request's context.
func tenantOf(ctx context.Context, _ http.Header) string {
	tenant, _ := ctx.Value(tenantKey{}).(string)
	return tenant
}

// With a key scope, two tenants that send the same key are two requests: a
// tenant never gets another tenant's response, whatever key it sends.
func ExampleWithKeyScope() {
	store := memory.New()
	defer store.Close()
	orders := 0
	createOrder := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		orders++
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"order":%d,"tenant":%q}`, orders, tenantOf(r.Context(), r.Header))
	})
	guard := httpmw.New(store, idempotency.WithKeyScope(tenantOf))
	handler := authenticate(guard(createOrder))

	for _, tenant := range []string{"acme", "globex", "acme"} {
		req := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader(`{"sku":"A-1"}`))
		req.Header.Set("Authorization", "Bearer "+tenant)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", "order-1")
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		fmt.Printf("%s: %d %s replayed=%q\n", tenant, rec.Code, rec.Body, rec.Header().Get("Idempotent-Replayed"))
	}
	// Output:
	// acme: 201 {"order":1,"tenant":"acme"} replayed=""
	// globex: 201 {"order":2,"tenant":"globex"} replayed=""
	// acme: 201 {"order":1,"tenant":"acme"} replayed="true"
}

// An adapter of your own drives the engine: here, a consumer of a message
// queue that may deliver a message twice. Begin either hands over an
// Execution, whose result the adapter stores with Complete (or gives up
// with Release, so that a retry runs again), or the record of the first
// delivery.
func ExampleNewEngine() {
	store := memory.New()
	defer store.Close()
	engine := idempotency.NewEngine(store)
	emails := 0

	deliver := func(ctx context.Context, messageID, body string) (string, error) {
		var f idempotency.Fingerprinter
		f.AddString(body)
		x, rec, err := engine.Begin(ctx, idempotency.Request{
			Route:       "queue/welcome-emails",
			Key:         messageID,
			Fingerprint: f.Sum(),
		})
		if err != nil {
			return "", err // in flight elsewhere, another payload, or the store is down
		}
		if rec != nil {
			return string(rec.Body) + " (replayed)", nil
		}
		emails++ // the side effect
		result := fmt.Sprintf(`{"email":%d}`, emails)
		if err := x.Complete(&idempotency.Record{Status: http.StatusOK, Body: []byte(result)}); err != nil {
			return "", err
		}
		return result, nil
	}

	for _, id := range []string{"msg-1", "msg-1", "msg-2"} {
		result, err := deliver(context.Background(), id, `{"to":"ada@example.com"}`)
		fmt.Println(id, result, err)
	}
	fmt.Println("emails sent:", emails)
	// Output:
	// msg-1 {"email":1} <nil>
	// msg-1 {"email":1} (replayed) <nil>
	// msg-2 {"email":2} <nil>
	// emails sent: 2
}
