package pgtest

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { Main(m) }

func TestPoolReachesThrowawayDatabase(t *testing.T) {
	t.Parallel()
	pool := Pool(t)
	var name string
	require.NoError(t, pool.QueryRow(t.Context(), "SELECT current_database()").Scan(&name))
	assert.True(t, strings.HasPrefix(name, "pgtest_"), "database %q", name)
	first := URL(t)
	assert.Equal(t, first, URL(t), "one database per test binary")
}

// TestStartServer starts and stops a throwaway server, as the tests do
// when no server answers.
func TestStartServer(t *testing.T) {
	t.Parallel()
	if _, err := lookPath("initdb"); err != nil {
		if os.Getenv(EnvRequire) == "1" {
			t.Fatalf("%s=1 and %v", EnvRequire, err)
		}
		t.Skipf("SKIPPING: %v", err)
	}
	s, err := startServer()
	require.NoError(t, err)
	conn, err := pgx.Connect(t.Context(), s.url)
	require.NoError(t, err)
	var one int
	require.NoError(t, conn.QueryRow(t.Context(), "SELECT 1").Scan(&one))
	assert.Equal(t, 1, one)
	require.NoError(t, conn.Close(context.Background()))
	require.NoError(t, s.stop())
	_, err = os.Stat(s.dir)
	assert.True(t, os.IsNotExist(err), "the folder is removed")
}
