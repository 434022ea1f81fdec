package main

import (
	"context"
	"errors"
)

// openPostgres opens the PostgreSQL store at url.
func openPostgres(context.Context, string) (*backend, error) {
	return nil, errors.New("PostgreSQL support requires store/pgstore, which this build does not include")
}
