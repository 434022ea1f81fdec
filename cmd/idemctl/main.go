// Command idemctl shows and frees idempotency keys in a shared store, so
// that an operator can release a key whose request is stuck, or let a
// request run again, without writing store commands by hand.
//
//	idemctl inspect -redis redis://127.0.0.1:6379/0 -route "POST /charges" -key KEY
//	idemctl forget  -redis redis://127.0.0.1:6379/0 -route "/pkg.Service/Method" -key KEY
//	idemctl stats   -redis redis://127.0.0.1:6379/0
//	idemctl inspect -postgres postgres://app@db.internal/app -table idempotency -route "POST /charges" -key KEY
//
// inspect prints what a key holds: nothing, a claim (a request in flight)
// with its lease left, or a completed record with its status, its size, the
// names of its headers and its time left. forget deletes the claim or
// record, so that the next request with the key runs; a forgotten claim's
// holder can no longer complete it. stats counts the claims and records of
// the store.
//
// A key is named by the route and the key the client sent (with -scope
// when the service sets one with idempotency.WithKeyScope), from which
// idemctl derives the storage key as the library does, or by the whole
// storage key with -storage-key. The key_hash that the library logs is only
// the storage key's first 12 characters, a hash that cannot be turned back
// into the key: it cannot name a key here.
//
// The store is Redis (-redis URL or IDEMCTL_REDIS_URL, -redis-cluster for a
// Cluster; -prefix as the service's redisstore.WithPrefix) or PostgreSQL
// (-postgres URL or IDEMCTL_POSTGRES_URL; -table as the service's
// pgstore.WithTable). Output is for people; -json prints one JSON object
// instead.
//
// Exit codes: 0 done, 1 error, 2 usage, 3 the key holds nothing (inspect
// and forget).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/store/pgstore"
	"github.com/idemkey/idempotency/store/redisstore"
)

const (
	exitOK     = 0
	exitError  = 1
	exitUsage  = 2
	exitAbsent = 3
)

// Environment variables that name the store when no flag does.
const (
	envRedisURL    = "IDEMCTL_REDIS_URL"
	envPostgresURL = "IDEMCTL_POSTGRES_URL"
)

// defaultTimeout bounds a whole command, connecting included. Counting a
// large store takes many round trips, hence the margin.
const defaultTimeout = 30 * time.Second

func main() {
	// go-redis logs every failed dial on its own; the error that ends the
	// command says it once.
	redis.SetLogger(quiet{})
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// quiet is a go-redis logger that logs nothing.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

// adminStore is what idemctl needs of a store.
type adminStore interface {
	idempotency.Inspector
	idempotency.Forgetter
	idempotency.Counter
}

// backend is an open store.
type backend struct {
	store adminStore
	// name says which store it is, for people: never a password.
	name  string
	close func()
}

const usageText = `idemctl shows and frees idempotency keys in a shared store.

Usage:
  idemctl inspect STORE KEY [-json]   show what a key holds
  idemctl forget  STORE KEY [-json]   delete a key's claim or record
  idemctl stats   STORE [-json]       count claims and records

STORE is one of:
  -redis URL             redis://[user:password@]host:port/db (or $IDEMCTL_REDIS_URL)
  -redis-cluster ADDRS   host:port,host:port or a redis:// URL with addr= parameters
  -postgres URL          postgres://... (or $IDEMCTL_POSTGRES_URL)
and for Redis -prefix (default "idempotency:"), for PostgreSQL -table
(default "idempotency").

KEY is either
  -route ROUTE -key KEY [-scope SCOPE] [-uuid4]
      ROUTE is "METHOD /path" for net/http ("POST /charges", path as sent)
      and the procedure for Connect and gRPC ("/pkg.Service/Method")
or
  -storage-key STORAGE_KEY
      the whole storage key (43 characters); the key_hash of the logs is
      only its first 12 and cannot name a key

Exit codes: 0 done, 1 error, 2 usage, 3 the key holds nothing.
Run "idemctl COMMAND -h" for a command's flags.
`

// run runs idemctl with args, the command line without the program name,
// and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return exitUsage
	}
	switch args[0] {
	case "inspect":
		return runInspect(args[1:], stdout, stderr)
	case "forget":
		return runForget(args[1:], stdout, stderr)
	case "stats":
		return runStats(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usageText)
		return exitOK
	}
	fmt.Fprintf(stderr, "idemctl: unknown command %q\n\n%s", args[0], usageText)
	return exitUsage
}

// options are a command's flags.
type options struct {
	redisURL     string
	redisCluster string
	postgresURL  string
	prefix       string
	table        string
	json         bool
	timeout      time.Duration

	route, key, scope string
	uuid4             bool
	storageKey        string
}

// usageError is a command line that cannot work.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// parse reads the flags of command name. keyed commands name a key. It
// returns the exit code to end with when it fails, and when asked for help.
func parse(name string, args []string, keyed bool, stderr io.Writer) (*options, int, bool) {
	o := &options{}
	fs := flag.NewFlagSet("idemctl "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.redisURL, "redis", "", "Redis `URL`, as redis://host:port/db (default $"+envRedisURL+")")
	fs.StringVar(&o.redisCluster, "redis-cluster", "", "Redis Cluster `addresses`, comma-separated, or a redis:// URL with addr= parameters")
	fs.StringVar(&o.postgresURL, "postgres", "", "PostgreSQL `URL` (default $"+envPostgresURL+")")
	fs.StringVar(&o.prefix, "prefix", redisstore.DefaultPrefix, "the Redis store's key prefix (redisstore.WithPrefix)")
	fs.StringVar(&o.table, "table", pgstore.DefaultTable, "the PostgreSQL store's `table`, optionally schema.table (pgstore.WithTable)")
	fs.BoolVar(&o.json, "json", false, "print one JSON object")
	fs.DurationVar(&o.timeout, "timeout", defaultTimeout, "give up after this long")
	if keyed {
		fs.StringVar(&o.route, "route", "", `the key's route: "POST /charges" for net/http, "/pkg.Service/Method" for RPCs`)
		fs.StringVar(&o.key, "key", "", "the idempotency key the client sent")
		fs.StringVar(&o.scope, "scope", "", "the key's scope, for a service that sets idempotency.WithKeyScope")
		fs.BoolVar(&o.uuid4, "uuid4", false, "the service requires version 4 UUID keys (idempotency.WithEnforceUUID4): read -key as one")
		fs.StringVar(&o.storageKey, "storage-key", "", "the whole storage key, instead of -route and -key")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, exitOK, false
		}
		return nil, exitUsage, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "idemctl %s: unexpected arguments: %s\n", name, strings.Join(fs.Args(), " "))
		return nil, exitUsage, false
	}
	if o.timeout <= 0 {
		fmt.Fprintf(stderr, "idemctl %s: -timeout must be positive\n", name)
		return nil, exitUsage, false
	}
	if keyed {
		if err := o.resolveKey(); err != nil {
			fmt.Fprintf(stderr, "idemctl %s: %v\n", name, err)
			return nil, exitUsage, false
		}
	}
	return o, exitOK, true
}

// storageKeyLen is the length of every storage key that
// [idempotency.StorageKey] returns.
var storageKeyLen = len(idempotency.StorageKey("", "", "k"))

// keyHashLen is the length of the key_hash that the library logs.
const keyHashLen = 12

// resolveKey sets o.storageKey from -route, -key and -scope, or checks the
// one given.
func (o *options) resolveKey() error {
	if o.storageKey != "" {
		if o.route != "" || o.key != "" || o.scope != "" {
			return usagef("give either -storage-key or -route and -key, not both")
		}
		switch {
		case len(o.storageKey) == keyHashLen:
			return usagef("-storage-key: %d characters is a key_hash from the logs, only the start of a storage key, "+
				"which cannot be looked up; give -route and -key, or the whole storage key of %d characters",
				keyHashLen, storageKeyLen)
		case len(o.storageKey) != storageKeyLen || strings.Trim(o.storageKey, base64URL) != "":
			return usagef("-storage-key: a storage key is %d characters of base64url", storageKeyLen)
		}
		return nil
	}
	if o.route == "" || o.key == "" {
		return usagef("name the key with -route and -key, or with -storage-key")
	}
	key, err := idempotency.ParseKey([]string{o.key}, o.uuid4)
	if err != nil {
		return usagef("-key: %v", err)
	}
	if key == "" {
		return usagef("-key: the key is empty")
	}
	o.storageKey = idempotency.StorageKey(o.scope, o.route, key)
	return nil
}

const base64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// open opens the store that o names, or that the environment does.
func (o *options) open(ctx context.Context, stderr io.Writer) (*backend, error) {
	redisURL, postgresURL := o.redisURL, o.postgresURL
	if redisURL == "" && o.redisCluster == "" && postgresURL == "" {
		redisURL, postgresURL = os.Getenv(envRedisURL), os.Getenv(envPostgresURL)
	}
	given := 0
	for _, s := range []string{redisURL, o.redisCluster, postgresURL} {
		if s != "" {
			given++
		}
	}
	switch {
	case given == 0:
		return nil, usagef("name the store with -redis, -redis-cluster or -postgres (or $%s, $%s)", envRedisURL, envPostgresURL)
	case given > 1:
		return nil, usagef("name one store: -redis, -redis-cluster or -postgres")
	case postgresURL != "":
		return openPostgres(ctx, postgresURL, o.table, stderr)
	case o.redisCluster != "":
		return openRedisCluster(ctx, o.redisCluster, o.prefix, stderr)
	}
	return openRedis(ctx, redisURL, o.prefix, stderr)
}

// session is a command under way: its flags, its store and its deadline.
type session struct {
	*options
	*backend
	name           string
	ctx            context.Context
	cancel         context.CancelFunc
	stdout, stderr io.Writer
}

// start parses the flags of command name and opens its store. When it
// returns nil, the command ends with code.
func start(name string, args []string, keyed bool, stdout, stderr io.Writer) (s *session, code int) {
	o, code, ok := parse(name, args, keyed, stderr)
	if !ok {
		return nil, code
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	b, err := o.open(ctx, stderr)
	if err != nil {
		cancel()
		fmt.Fprintf(stderr, "idemctl %s: %v\n", name, err)
		if errors.As(err, new(*usageError)) {
			return nil, exitUsage
		}
		return nil, exitError
	}
	return &session{options: o, backend: b, name: name, ctx: ctx, cancel: cancel, stdout: stdout, stderr: stderr}, exitOK
}

// end closes the store.
func (s *session) end() {
	s.close()
	s.cancel()
}

// fail reports err and returns the exit code of an error.
func (s *session) fail(err error) int {
	fmt.Fprintf(s.stderr, "idemctl %s: %v\n", s.name, err)
	return exitError
}
