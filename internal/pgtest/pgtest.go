// Package pgtest finds or starts a real PostgreSQL for tests, and gives each
// test binary a throwaway database of its own. It never imitates
// PostgreSQL.
//
// The server is, in this order: the one at IDEMPOTENCY_POSTGRES_URL when
// that is set; the one on 127.0.0.1:5432 as user postgres, when it answers;
// otherwise a throwaway server, started with initdb and pg_ctl (from the
// Debian postgresql package) in a temporary folder on a free loopback port,
// run as user postgres when the tests run as root. On that server the first
// test that asks creates a database with a random name, which [Main] drops
// when the tests end. A package whose tests use it calls [Main] from
// TestMain.
//
// When no server can be had, tests that need one skip with a loud message,
// or fail when IDEMPOTENCY_REQUIRE_POSTGRES=1, as CI sets it.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

const (
	// EnvURL names the variable that points tests at an existing server, as
	// a postgres:// URL of a role that may create databases.
	EnvURL = "IDEMPOTENCY_POSTGRES_URL"
	// EnvRequire names the variable that, set to 1, turns a missing server
	// into a test failure instead of a skip.
	EnvRequire = "IDEMPOTENCY_REQUIRE_POSTGRES"
	// localURL is the server tried when EnvURL is not set.
	localURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable&connect_timeout=2"
)

var shared struct {
	mu     sync.Mutex
	admin  string // URL of the server's maintenance database
	dbURL  string // URL of the throwaway database; "" until created
	dbName string
	server *server // a server this package started, or nil
	err    error   // why no server could be had
}

// URL returns the URL of this test binary's throwaway database, creating it
// (and starting a server) on first use. It skips or fails tb when no server
// can be had.
func URL(tb testing.TB) string {
	tb.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.dbURL != "" {
		return shared.dbURL
	}
	if shared.err == nil {
		shared.err = setUp()
	}
	if shared.err != nil {
		msg := fmt.Sprintf("no PostgreSQL for the tests: %v; install the postgresql package "+
			"(Debian/Ubuntu: apt-get install postgresql) or set %s", shared.err, EnvURL)
		if os.Getenv(EnvRequire) == "1" {
			tb.Fatalf("pgtest: %s=1 and %s", EnvRequire, msg)
		}
		tb.Skipf("SKIPPING: %s", msg)
	}
	return shared.dbURL
}

// Config returns a pool configuration for this test binary's database.
// Its sessions commit without waiting for the disk (synchronous_commit
// off): a shared server's fsyncs would otherwise stretch the timings of
// tests that run in real time, and no test crashes the server, so what
// they check is the same.
func Config(tb testing.TB) *pgxpool.Config {
	tb.Helper()
	cfg, err := pgxpool.ParseConfig(URL(tb))
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	return cfg
}

// Pool returns a new pool on this test binary's database, closed when the
// test ends.
func Pool(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	return NewPool(tb, Config(tb))
}

// NewPool returns a pool with cfg, closed when the test ends.
func NewPool(tb testing.TB, cfg *pgxpool.Config) *pgxpool.Pool {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	tb.Cleanup(pool.Close)
	return pool
}

// Name returns a table name that no other test uses, such as
// "pgtest_3f9a0c1d2e4b5a69". The database is dropped with everything in it
// when the tests end.
func Name(prefix string) string {
	return prefix + "_" + randomHex(8)
}

// Main runs the tests, then drops the throwaway database and stops the
// server this package started, if any, and exits. Call it from TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	if err := TearDown(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// TearDown drops the throwaway database and stops the server this package
// started, if any. [Main] calls it; a TestMain that runs the tests through
// another package's Main, such as redistest.Main, passes it there.
func TearDown() error {
	if err := tearDown(); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

// setUp finds or starts a server and creates the throwaway database.
func setUp() error {
	admin, err := findServer()
	if err != nil {
		return err
	}
	name := "pgtest_" + randomHex(8)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return fmt.Errorf("create database: %w", err)
	}
	shared.admin, shared.dbName = admin, name
	shared.dbURL = withDatabase(admin, name)
	return nil
}

// withDatabase returns url with its database replaced by name.
func withDatabase(url, name string) string {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return url
	}
	host := cfg.Host
	if filepath.IsAbs(host) {
		host = "%2F" + host[1:] // a socket folder, escaped for the URL
	}
	auth := cfg.User
	if cfg.Password != "" {
		auth += ":" + cfg.Password
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", auth, host, cfg.Port, name)
}

func findServer() (string, error) {
	if url := os.Getenv(EnvURL); url != "" {
		return url, ping(url)
	}
	if ping(localURL) == nil {
		return localURL, nil
	}
	s, err := startServer()
	if err != nil {
		return "", err
	}
	shared.server = s
	return s.url, nil
}

func ping(url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

func tearDown() error {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	var errs []error
	if shared.dbName != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, shared.admin)
		if err == nil {
			_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+shared.dbName+" WITH (FORCE)")
			_ = conn.Close(ctx)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("drop database %s: %w", shared.dbName, err))
		}
	}
	if shared.server != nil {
		errs = append(errs, shared.server.stop())
	}
	shared.dbURL, shared.dbName, shared.server = "", "", nil
	return errors.Join(errs...)
}

// server is a throwaway PostgreSQL that this package started.
type server struct {
	dir   string
	pgCtl string
	url   string
	runAs *syscall.Credential
}

// startServer initialises a cluster in a temporary folder and starts it on
// a free loopback port.
func startServer() (*server, error) {
	initdb, err := lookPath("initdb")
	if err != nil {
		return nil, err
	}
	pgCtl, err := lookPath("pg_ctl")
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, err
	}
	s := &server{dir: dir, pgCtl: pgCtl}
	if os.Geteuid() == 0 {
		// initdb and postgres refuse to run as root.
		if s.runAs, err = credentialOf("postgres"); err != nil {
			_ = os.RemoveAll(dir)
			return nil, fmt.Errorf("running as root, and %w", err)
		}
		if err := os.Chown(dir, int(s.runAs.Uid), int(s.runAs.Gid)); err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
	}
	port, err := freePort()
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	data := filepath.Join(dir, "data")
	if out, err := s.run(initdb, "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %w: %s", err, out)
	}
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300", port, dir)
	if out, err := s.run(pgCtl, "-D", data, "-o", opts, "-l", filepath.Join(dir, "log"), "-w", "-t", "60", "start"); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("pg_ctl start: %w: %s", err, out)
	}
	s.url = "postgres://postgres@127.0.0.1:" + strconv.Itoa(port) + "/postgres?sslmode=disable"
	return s, nil
}

func (s *server) run(name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = s.dir
	if s.runAs != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.runAs}
	}
	return cmd.CombinedOutput()
}

func (s *server) stop() error {
	out, err := s.run(s.pgCtl, "-D", filepath.Join(s.dir, "data"), "-m", "immediate", "-w", "stop")
	if err != nil {
		err = fmt.Errorf("pg_ctl stop: %w: %s", err, out)
	}
	return errors.Join(err, os.RemoveAll(s.dir))
}

// lookPath finds a PostgreSQL program on PATH or in Debian's versioned
// folders, newest first.
func lookPath(name string) (string, error) {
	if path, err := exec.LookPath(name); err == nil {
		return path, nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/" + name)
	if len(matches) == 0 {
		return "", fmt.Errorf("%s not found on PATH or in /usr/lib/postgresql/*/bin", name)
	}
	return matches[len(matches)-1], nil
}

func credentialOf(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("no user %q to run PostgreSQL as: %w", name, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, err
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails, by its documentation
	return hex.EncodeToString(b)
}
