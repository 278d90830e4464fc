package release_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/drover/drover/internal/service"
)

// TestMain lets this test binary stand in for `drover node supervise`: the
// engine starts a socket service's supervisor by running its own binary
// with those arguments.
func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == "node" && os.Args[2] == "supervise" {
		fs := flag.NewFlagSet("supervise", flag.ExitOnError)
		pids := fs.String("pids", "", "")
		name := fs.String("service", "", "")
		_ = fs.Parse(os.Args[3:])
		if err := service.Supervise(context.Background(), service.SupervisorConfig{PIDsDir: *pids, Service: *name}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}
