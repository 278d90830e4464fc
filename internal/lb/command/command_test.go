package command_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/lb"
	"github.com/drover/drover/internal/lb/command"
	"github.com/drover/drover/internal/lb/lbtest"
	"github.com/drover/drover/internal/testenv/debpkg"
	"github.com/drover/drover/internal/testenv/haproxytest"
)

// lbScript is what a team might already have: a script that drives HAProxy
// with socat and prints the status format drover reads.
const lbScript = `#!/bin/bash
set -euo pipefail
sock=$1 backend=$2 verb=$3
api() { echo "$1" | socat -t 2 - "UNIX-CONNECT:$sock"; }
case $verb in
drain|enable)
  [[ $verb == enable ]] && verb=ready
  out=$(api "set server $backend/$DROVER_LB_MEMBER state $verb")
  if [[ -n ${out//[$'\n ']/} ]]; then echo "haproxy: $out" >&2; exit 1; fi ;;
status)
  { api "show servers state $backend"; api "show stat"; } | awk -v b="$backend" '
    $1 ~ /^[0-9]+$/ && $2 == b { admin[$4] = $7; next }
    { n = split($0, f, ","); if (n > 20 && f[1] == b && f[2] != "BACKEND") {
        s = "down"; if (f[18] ~ /^(UP|DRAIN|no check)/) s = "up"
        if (admin[f[2]] != 0) s = "drain"
        print f[2], s, f[5] } }' ;;
esac
`

func haveSocat() bool { _, err := exec.LookPath("socat"); return err == nil }

func TestConformanceAgainstHAProxy(t *testing.T) {
	if err := debpkg.Ensure("socat", haveSocat); err != nil {
		t.Skip(err)
	}
	script := filepath.Join(t.TempDir(), "lb.sh")
	if err := os.WriteFile(script, []byte(lbScript), 0o755); err != nil {
		t.Fatal(err)
	}
	lbtest.Run(t, func(t *testing.T) lbtest.Fixture {
		var servers []haproxytest.Server
		var names []string
		for i := 1; i <= 3; i++ {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
			t.Cleanup(srv.Close)
			name := fmt.Sprintf("web%d", i)
			names = append(names, name)
			servers = append(servers, haproxytest.Server{Name: name, Addr: strings.TrimPrefix(srv.URL, "http://")})
		}
		hp := haproxytest.Start(t, haproxytest.Options{Servers: servers})
		run := fmt.Sprintf("%s %s %s ", script, hp.Socket, hp.Backend)
		b := command.New(command.Config{
			Drain:   run + "drain # {{member}}",
			Enable:  run + "enable",
			Status:  run + "status",
			Timeout: 5 * time.Second,
		})
		return lbtest.Fixture{Balancer: b, Members: names, Kill: hp.Stop}
	})
}

// TestMemberInCommandAndEnv: {{member}} is replaced in the command line and
// DROVER_LB_MEMBER is set.
func TestMemberInCommandAndEnv(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	b := command.New(command.Config{
		Status: "printf 'web1 up 0\\nweb2 up 3\\n'",
		Drain:  "echo drain {{member}} $DROVER_LB_MEMBER >> " + log,
		Enable: "echo enable {{member}} $DROVER_LB_MEMBER >> " + log,
	})
	ctx := context.Background()
	if err := b.Drain(ctx, "web2"); err != nil {
		t.Fatal(err)
	}
	if err := b.Enable(ctx, "web1"); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(log)
	if string(got) != "drain web2 web2\nenable web1 web1\n" {
		t.Errorf("commands ran as %q", got)
	}
	if err := b.Drain(ctx, "web1; rm -rf /"); err == nil || !strings.Contains(err.Error(), "lb_name") {
		t.Errorf("a member name with shell characters: %v", err)
	}
}

// TestTimeoutKillsTheCommand: a command that hangs fails after the timeout,
// its children killed with it, and the error quotes its output.
func TestTimeoutKillsTheCommand(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	b := command.New(command.Config{Status: "echo started; sleep 30 & echo $! > " + pidFile + "; wait", Timeout: 300 * time.Millisecond})
	start := time.Now()
	_, err := b.Members(context.Background())
	if err == nil || !strings.Contains(err.Error(), "timed out after 300ms") || !strings.Contains(err.Error(), "started") {
		t.Errorf("hanging status: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("hanging status took %s", took)
	}
	pid, _ := os.ReadFile(pidFile)
	deadline := time.Now().Add(5 * time.Second)
	for {
		// kill -0 fails once the sleep is gone (or a zombie reaped by init).
		if exec.Command("sh", "-c", "ps -o stat= -p "+strings.TrimSpace(string(pid))+" | grep -qv Z").Run() != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the status command's child %s outlived its timeout", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFailureQuotesOutput: a failing command's error names the verb, the
// member and the command, and quotes what it printed.
func TestFailureQuotesOutput(t *testing.T) {
	b := command.New(command.Config{Status: "echo web1 up", Drain: "echo no route to lb >&2; exit 3"})
	err := b.Drain(context.Background(), "web1")
	if err == nil || !strings.Contains(err.Error(), "lb command drain web1") || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "no route to lb") {
		t.Errorf("failing drain: %v", err)
	}
}

func TestParseStatus(t *testing.T) {
	tests := []struct {
		name, out string
		want      []lb.Member
		err       string
	}{
		{"states and counts", "# name state active\nweb1 up 2\nweb2 DOWN\n\nweb3 drain 1\nweb4 drain 0\n", []lb.Member{
			{Name: "web1", Enabled: true, Healthy: true, Active: 2, Detail: "up 2"},
			{Name: "web2", Enabled: true, Active: -1, Detail: "DOWN"},
			{Name: "web3", Active: 1, Draining: true, Detail: "drain 1"},
			{Name: "web4", Active: 0, Detail: "drain 0"},
		}, ""},
		{"unknown state", "web1 maint\n", nil, `line 1 "web1 maint": state "maint" is not up, down or drain`},
		{"bad count", "web1 up many\n", nil, `ACTIVE "many"`},
		{"too many fields", "web1 up 1 extra\n", nil, "want NAME up|down|drain [ACTIVE]"},
		{"one field", "web1\n", nil, "want NAME"},
		{"twice", "web1 up\nweb1 down\n", nil, "listed twice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := command.ParseStatus(tc.out)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("ParseStatus: %v, want error with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("ParseStatus =\n%+v\nwant\n%+v", got, tc.want)
			}
		})
	}
}
