package redisstore_test

import (
	"log"
	"net/http"

	"connectrpc.com/connect"
	"github.com/redis/go-redis/v9"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/httpmw"
	"github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1/paymentsv1connect"
	"github.com/idemkey/idempotency/store/redisstore"
)

// A Redis store shares claims and records between every instance of a
// service, for the Connect interceptor and the middleware alike. The client
// must have ContextTimeoutEnabled for the store timeout to apply. (This
// example needs a Redis server, so it is compiled but not run; the
// package's tests run the store against real ones.)
func ExampleNew() {
	client := redis.NewClient(&redis.Options{
		Addr:                  "localhost:6379",
		ContextTimeoutEnabled: true,
	})
	defer client.Close()
	store := redisstore.New(client, redisstore.WithPrefix("payments:idempotency:"))
	defer store.Close()

	mux := http.NewServeMux()
	mux.Handle(paymentsv1connect.NewPaymentServiceHandler(
		paymentsv1connect.UnimplementedPaymentServiceHandler{}, // your service
		connect.WithInterceptors(idempotency.NewInterceptor(store)),
	))
	mux.Handle("POST /orders", httpmw.New(store)(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"order":"ord_1"}`))
	})))
	if err := http.ListenAndServe("localhost:8080", mux); err != nil {
		log.Print(err)
	}
}
