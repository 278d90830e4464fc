// Package elbv2fake is a local HTTP server that speaks the AWS Elastic Load
// Balancing v2 query protocol (form-encoded POST, Action=...&Version=2015-12-01,
// XML answers in the documented shape) for exactly the three calls drover
// makes: DescribeTargetHealth, RegisterTargets and DeregisterTargets, on one
// target group. AWS cannot be reached from tests; aws-sdk-go-v2 is pointed
// at Fake.URL with BaseEndpoint and static credentials (signatures are not
// checked).
//
// Targets move through the states AWS documents: a registered target is
// "initial" for Options.HealthyAfter, then "healthy" (or "unhealthy" while
// SetHealthy(id, false)); a deregistered target is "draining" for
// Options.DeregistrationDelay, then "unused" and no longer listed.
package elbv2fake

import (
	"encoding/xml"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Version is the ELBv2 API version the fake answers.
const Version = "2015-12-01"

// DefaultARN is the target group's ARN unless Options.TargetGroupARN says.
const DefaultARN = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/app/0123456789abcdef"

// Target is a target id (instance id or IP address) and port.
type Target struct {
	ID   string
	Port int32
}

// Options describe the target group.
type Options struct {
	// TargetGroupARN is the only target group; default DefaultARN.
	TargetGroupARN string
	// Targets are registered and healthy at start. Only their ids are valid
	// targets: others get InvalidTarget. A zero Port means DefaultPort.
	Targets []Target
	// DefaultPort is the target group's port, for targets given without
	// one; default 80.
	DefaultPort int32
	// HealthyAfter is how long a newly registered target stays "initial"
	// (its health checks passing the threshold); default 200ms.
	HealthyAfter time.Duration
	// DeregistrationDelay is how long a deregistered target stays
	// "draining"; default 300ms.
	DeregistrationDelay time.Duration
}

// Fake is a running fake ELBv2 endpoint.
type Fake struct {
	// URL is the endpoint for the SDK's BaseEndpoint.
	URL string
	// ARN is the target group's ARN.
	ARN string

	opts  Options
	srv   *httptest.Server
	mu    sync.Mutex
	valid map[string]bool // target ids that exist
	sick  map[string]bool // ids whose health check fails
	tgts  map[Target]*target
	calls []string
}

type target struct {
	registeredAt   time.Time // zero: registered and past initial at start
	deregisteredAt time.Time // zero: registered
}

// Start starts the fake; t.Cleanup closes it.
func Start(t testing.TB, opts Options) *Fake {
	if opts.TargetGroupARN == "" {
		opts.TargetGroupARN = DefaultARN
	}
	if opts.DefaultPort == 0 {
		opts.DefaultPort = 80
	}
	if opts.HealthyAfter == 0 {
		opts.HealthyAfter = 200 * time.Millisecond
	}
	if opts.DeregistrationDelay == 0 {
		opts.DeregistrationDelay = 300 * time.Millisecond
	}
	f := &Fake{ARN: opts.TargetGroupARN, opts: opts, valid: map[string]bool{}, sick: map[string]bool{}, tgts: map[Target]*target{}}
	for _, tg := range opts.Targets {
		if tg.Port == 0 {
			tg.Port = opts.DefaultPort
		}
		f.valid[tg.ID] = true
		f.tgts[tg] = &target{}
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	f.URL = f.srv.URL
	t.Cleanup(f.Close)
	return f
}

// Close stops the endpoint: calls after it fail to connect.
func (f *Fake) Close() { f.srv.Close() }

// SetHealthy sets whether the health checks of target id pass.
func (f *Fake) SetHealthy(id string, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sick[id] = !ok
}

// Calls returns the actions received so far with the API version the fake
// speaks, like "DeregisterTargets i-1:80".
func (f *Fake) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// state returns the target's state and reason now.
func (f *Fake) state(k Target, tg *target, now time.Time) (string, string, string) {
	switch {
	case tg == nil:
		return "unused", "Target.NotRegistered", "Target is not registered to the target group"
	case !tg.deregisteredAt.IsZero():
		if now.Sub(tg.deregisteredAt) < f.opts.DeregistrationDelay {
			return "draining", "Target.DeregistrationInProgress", "Target deregistration is in progress"
		}
		return "unused", "Target.NotRegistered", "Target is not registered to the target group"
	case now.Sub(tg.registeredAt) < f.opts.HealthyAfter:
		return "initial", "Elb.RegistrationInProgress", "Target registration is in progress"
	case f.sick[k.ID]:
		return "unhealthy", "Target.ResponseCodeMismatch", "Health checks failed with these codes: [503]"
	}
	return "healthy", "", ""
}

// errorResponse is the query protocol's error document.
type errorResponse struct {
	XMLName xml.Name `xml:"ErrorResponse"`
	Xmlns   string   `xml:"xmlns,attr"`
	Type    string   `xml:"Error>Type"`
	Code    string   `xml:"Error>Code"`
	Message string   `xml:"Error>Message"`
	ID      string   `xml:"RequestId"`
}

type apiError struct {
	status     int
	code, text string
}

func (f *Fake) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	if err := r.ParseForm(); err != nil {
		writeError(w, &apiError{400, "MalformedQueryString", err.Error()})
		return
	}
	body, aerr := f.handle(r.PostForm)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	w.Header().Set("Content-Type", "text/xml")
	fmt.Fprint(w, xml.Header)
	_ = xml.NewEncoder(w).Encode(body)
}

func writeError(w http.ResponseWriter, e *apiError) {
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(e.status)
	fmt.Fprint(w, xml.Header)
	_ = xml.NewEncoder(w).Encode(errorResponse{Xmlns: ns, Type: "Sender", Code: e.code, Message: e.text, ID: "fake-request"})
}

const ns = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"

type targetXML struct {
	ID   string `xml:"Id"`
	Port int32  `xml:"Port"`
}

type healthXML struct {
	Target          targetXML `xml:"Target"`
	HealthCheckPort string    `xml:"HealthCheckPort"`
	State           string    `xml:"TargetHealth>State"`
	Reason          string    `xml:"TargetHealth>Reason,omitempty"`
	Description     string    `xml:"TargetHealth>Description,omitempty"`
}

type describeResponse struct {
	XMLName xml.Name    `xml:"DescribeTargetHealthResponse"`
	Xmlns   string      `xml:"xmlns,attr"`
	Members []healthXML `xml:"DescribeTargetHealthResult>TargetHealthDescriptions>member"`
	ID      string      `xml:"ResponseMetadata>RequestId"`
}

// emptyResponse is <ActionResponse><ActionResult/><ResponseMetadata>...
type emptyResponse struct {
	XMLName xml.Name
	Xmlns   string `xml:"xmlns,attr"`
	Result  struct {
		XMLName xml.Name
	}
	ID string `xml:"ResponseMetadata>RequestId"`
}

func (f *Fake) handle(form url.Values) (any, *apiError) {
	action := form.Get("Action")
	if v := form.Get("Version"); v != Version {
		return nil, &apiError{400, "InvalidParameterValue", fmt.Sprintf("Version %q is not %s", v, Version)}
	}
	targets, aerr := f.targets(form)
	if aerr != nil {
		return nil, aerr
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var names []string
	for _, k := range targets {
		names = append(names, fmt.Sprintf("%s:%d", k.ID, k.Port))
	}
	f.calls = append(f.calls, strings.TrimSpace(action+" "+strings.Join(names, " ")))
	if arn := form.Get("TargetGroupArn"); arn != f.ARN {
		return nil, &apiError{400, "TargetGroupNotFound", fmt.Sprintf("Target groups '%s' not found", arn)}
	}
	for _, k := range targets {
		if !f.valid[k.ID] {
			return nil, &apiError{400, "InvalidTarget", fmt.Sprintf("The following targets are not valid instances or IP addresses: '%s'", k.ID)}
		}
	}
	now := time.Now()
	switch action {
	case "DescribeTargetHealth":
		if len(targets) == 0 { // every target registered or draining
			for k, tg := range f.tgts {
				if s, _, _ := f.state(k, tg, now); s != "unused" {
					targets = append(targets, k)
				}
			}
			sort.Slice(targets, func(i, j int) bool {
				return fmt.Sprint(targets[i]) < fmt.Sprint(targets[j])
			})
		}
		out := describeResponse{Xmlns: ns, ID: "fake-request"}
		for _, k := range targets {
			s, reason, desc := f.state(k, f.tgts[k], now)
			out.Members = append(out.Members, healthXML{Target: targetXML(k), HealthCheckPort: strconv.Itoa(int(k.Port)), State: s, Reason: reason, Description: desc})
		}
		return out, nil
	case "RegisterTargets", "DeregisterTargets":
		if len(targets) == 0 {
			return nil, &apiError{400, "ValidationError", "Targets is required"}
		}
		for _, k := range targets {
			tg := f.tgts[k]
			if action == "RegisterTargets" {
				if tg == nil || !tg.deregisteredAt.IsZero() {
					f.tgts[k] = &target{registeredAt: now}
				}
				continue
			}
			if s, _, _ := f.state(k, tg, now); s == "unused" {
				return nil, &apiError{400, "InvalidTarget", fmt.Sprintf("The following targets are not registered in target group: '%s'", k.ID)}
			}
			if tg.deregisteredAt.IsZero() {
				tg.deregisteredAt = now
			}
		}
		out := emptyResponse{XMLName: xml.Name{Local: action + "Response"}, Xmlns: ns, ID: "fake-request"}
		out.Result.XMLName = xml.Name{Local: action + "Result"}
		return out, nil
	}
	return nil, &apiError{400, "InvalidAction", fmt.Sprintf("The action %q is not valid for this web service (the fake speaks DescribeTargetHealth, RegisterTargets, DeregisterTargets)", action)}
}

// targets reads Targets.member.N.Id / .Port from the form.
func (f *Fake) targets(form url.Values) ([]Target, *apiError) {
	var out []Target
	for i := 1; ; i++ {
		p := fmt.Sprintf("Targets.member.%d.", i)
		id := form.Get(p + "Id")
		if id == "" {
			return out, nil
		}
		port := f.opts.DefaultPort
		if s := form.Get(p + "Port"); s != "" {
			n, err := strconv.ParseInt(s, 10, 32)
			if err != nil {
				return nil, &apiError{400, "ValidationError", fmt.Sprintf("%sPort %q is not a port", p, s)}
			}
			port = int32(n)
		}
		out = append(out, Target{ID: id, Port: port})
	}
}
