package pgstore_test

import (
	"context"
	"encoding/json"
	"log"
	"net/http"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkey/idempotency/httpmw"
	"github.com/idemkey/idempotency/store/pgstore"
)

// The store keeps its table in the application's database; the handler
// writes to that database in the transaction that pgstore.Tx hands it, and
// the library commits it together with the stored response.
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	if err := pgstore.Migrate(ctx, pool); err != nil {
		log.Print(err)
		return
	}
	store := pgstore.New(pool)
	defer store.Close() // before pool.Close: the store does not own the pool

	charge := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tx, err := pgstore.Tx(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		var id int64
		err = tx.QueryRow(r.Context(), "INSERT INTO charges (cents) VALUES ($1) RETURNING id", 1250).Scan(&id)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		// Not committed yet: the library stores this answer in tx, commits,
		// and then sends it.
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(map[string]int64{"id": id})
	})
	mux := http.NewServeMux()
	mux.Handle("POST /charges", httpmw.New(store)(charge))
	log.Print(http.ListenAndServe(":8080", mux))
}

// A test of a handler runs it on a transaction of its own, which it rolls
// back afterwards.
func ExampleContextWithTx() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	tx, err := pool.Begin(ctx)
	if err != nil {
		log.Print(err)
		return
	}
	defer func() { _ = tx.Rollback(ctx) }()

	handlerCtx := pgstore.ContextWithTx(ctx, tx)
	// The handler's code calls pgstore.Tx(handlerCtx) and gets tx.
	_ = handlerCtx
}
