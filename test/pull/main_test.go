//go:build integration

package pull

import (
	"testing"

	"github.com/drover/drover/internal/testenv/dbtest"
)

// TestMain stops the database servers the tests started (dbtest).
func TestMain(m *testing.M) { dbtest.Main(m) }
