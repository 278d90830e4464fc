package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAgentWarnsOnPlainHTTP: an agent whose server is http:// on another
// machine says so, naming the URL and telling to use https; loopback and
// https are quiet.
func TestAgentWarnsOnPlainHTTP(t *testing.T) {
	for _, tc := range []struct {
		server string
		warn   bool
	}{
		{"http://drover.internal:8700", true},
		{"http://10.0.0.9:8700", true},
		{"http://[2001:db8::1]:8700", true},
		{"http://127.0.0.1:8700", false},
		{"http://localhost:8700", false},
		{"http://[::1]:8700", false},
		{"https://drover.internal:8700", false},
	} {
		t.Run(tc.server, func(t *testing.T) {
			dir := t.TempDir()
			cfg := filepath.Join(dir, "agent.yml")
			body := fmt.Sprintf("server: %s\ntoken: drv_x\nstate_dir: %s\nnode: n1\napps:\n  - {app: shop, env: prod, repo: %s, deploy_to: %s}\n",
				tc.server, filepath.Join(dir, "state"), dir, filepath.Join(dir, "srv"))
			if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			// A cancelled context: the agent stops before it reaches out.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			var errb bytes.Buffer
			_ = Agent(ctx, &AgentOptions{Config: cfg, Once: true, IO: IO{Out: io.Discard, Err: &errb}})
			got := strings.Contains(errb.String(), "warning: "+cfg+": server "+tc.server+" is plain http") && strings.Contains(errb.String(), "use https://")
			if got != tc.warn {
				t.Errorf("warned %v, want %v; stderr:\n%s", got, tc.warn, errb.String())
			}
		})
	}
}
