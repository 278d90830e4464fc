package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/drover/drover/examples"
	"github.com/drover/drover/internal/lock"
	"github.com/dustin/go-humanize"
)

// DemoOptions are the inputs of `drover demo`.
type DemoOptions struct {
	Dir   string // where the example's repo and deploy_to go; default ~/.local/share/drover/demo
	Ports []int  // ports of the example's web service
	IO    IO
	// Transport options are taken from Common for the local host.
	Common Common
}

// Demo deploys drover's bundled example app to this machine: it writes the
// app into a git repository, a drover.yml with `transport: local`, and runs
// a real deploy, then checks the service answers and prints its URL.
func Demo(ctx context.Context, o *DemoOptions) error {
	dir := o.Dir
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return err
		}
		dir = filepath.Join(home, ".local", "share", "drover", "demo")
	}
	if len(o.Ports) == 0 {
		o.Ports = []int{18080, 18081}
	}
	src, srv := filepath.Join(dir, "src"), filepath.Join(dir, "srv")
	if err := writeExample(ctx, src, srv, o.Ports); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	fmt.Fprintf(o.IO.Out, "example app in %s (a git repository), deploying to %s\n", src, srv)
	d := &DeployOptions{Common: o.Common, Lease: lock.DefaultLease}
	d.File, d.Env, d.IO = filepath.Join(src, "drover.yml"), "demo", o.IO
	url := fmt.Sprintf("http://127.0.0.1:%d/", o.Ports[0])
	// A redeploy: show that the restart refuses nothing, under load.
	var load *demoLoad
	if _, err := get(ctx, url); err == nil {
		load = startDemoLoad(url)
	}
	_, err := Deploy(ctx, d)
	if load != nil {
		sent, failed, first := load.stop()
		fmt.Fprintf(o.IO.Out, "\nredeployed under load: %s of %s requests failed\n", humanize.Comma(failed), humanize.Comma(sent))
		if first != nil {
			fmt.Fprintf(o.IO.Out, "first failure: %v\n", first)
		}
	}
	if err != nil {
		return err
	}
	body, err := get(ctx, url)
	if err != nil {
		return fmt.Errorf("demo: deployed, but %s does not answer: %w", url, err)
	}
	fmt.Fprintf(o.IO.Out, "\n%s\nThe example app is running: %s\n", strings.TrimSpace(body), url)
	self := "drover"
	if exe, err := os.Executable(); err == nil {
		self = exe
	}
	fmt.Fprintf(o.IO.Out, "Try: cd %s && %s releases demo   (or: service status demo, rollback demo, exec demo -- ls)\n", src, self)
	return nil
}

func get(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return string(b), err
}

// writeExample writes the embedded example into a git repository at src,
// committing on branch main when anything changed.
func writeExample(ctx context.Context, src, srv string, ports []int) error {
	if err := os.MkdirAll(src, 0o755); err != nil {
		return err
	}
	main, err := examples.Hello.ReadFile("hello/main.go")
	if err != nil {
		return err
	}
	tmpl, err := examples.Hello.ReadFile("hello/drover.yml")
	if err != nil {
		return err
	}
	ps := make([]string, len(ports))
	for i, p := range ports {
		ps[i] = strconv.Itoa(p)
	}
	yml := strings.NewReplacer("REPO", src, "DEPLOY_TO", srv, "PORTS", strings.Join(ps, ", ")).Replace(string(tmpl))
	files := map[string]string{
		"main.go":    string(main),
		"go.mod":     "module example.com/hello\n\ngo 1.22\n",
		"drover.yml": yml,
		".gitignore": "/bin/\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(src, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	git := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "git", append([]string{"-C", src, "-c", "user.name=drover demo", "-c", "user.email=demo@drover.invalid", "-c", "init.defaultBranch=main"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("git %s: %s", args[0], strings.TrimSpace(string(out)))
		}
		return nil
	}
	if _, err := os.Stat(filepath.Join(src, ".git")); err != nil {
		if err := git("init", "--quiet"); err != nil {
			return err
		}
		if err := git("checkout", "--quiet", "-B", "main"); err != nil {
			return err
		}
	}
	if err := git("add", "-A"); err != nil {
		return err
	}
	if out, _ := gitOut(ctx, src, "status", "--porcelain"); out != "" {
		if err := git("commit", "--quiet", "-m", "drover demo: example app"); err != nil {
			return err
		}
	}
	return nil
}

// demoLoad sends requests to the demo's URL from a few goroutines, half on
// kept-alive connections and half on new ones, while a redeploy runs;
// bounded in count and time.
type demoLoad struct {
	sent, failed atomic.Int64
	mu           sync.Mutex
	first        error
	cancel       context.CancelFunc
	wg           sync.WaitGroup
}

const (
	demoLoadWorkers = 4
	demoLoadMax     = 200_000
	demoLoadLimit   = 5 * time.Minute
)

func startDemoLoad(url string) *demoLoad {
	ctx, cancel := context.WithTimeout(context.Background(), demoLoadLimit)
	l := &demoLoad{cancel: cancel}
	for i := range demoLoadWorkers {
		tr := &http.Transport{DisableKeepAlives: i%2 == 1, Proxy: nil}
		client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer tr.CloseIdleConnections()
			for ctx.Err() == nil && l.sent.Add(1) <= demoLoadMax {
				err := l.once(ctx, client, url)
				if err != nil && ctx.Err() == nil {
					l.failed.Add(1)
					l.mu.Lock()
					if l.first == nil {
						l.first = err
					}
					l.mu.Unlock()
				} else if err != nil {
					l.sent.Add(-1) // cut short by stop: not counted
				}
			}
		}()
	}
	return l
}

func (l *demoLoad) once(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// stop ends the load and returns how many requests it sent and how many
// failed, with the first failure.
func (l *demoLoad) stop() (sent, failed int64, first error) {
	l.cancel()
	l.wg.Wait()
	return min(l.sent.Load(), demoLoadMax), l.failed.Load(), l.first
}
