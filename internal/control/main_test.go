package control_test

import (
	"testing"

	"github.com/drover/drover/internal/testenv/dbtest"
)

// TestMain stops the database servers the takeover test starts.
func TestMain(m *testing.M) { dbtest.Main(m) }
