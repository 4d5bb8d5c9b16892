package sandbox

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Reach is the result of pinging one pod from another.
type Reach struct {
	From, To PodState
	OK       bool
	RTT      time.Duration // average round trip when OK
}

var rttRe = regexp.MustCompile(`= [\d.]+/([\d.]+)/`)

// Matrix pings every pod from every other pod (count pings each) and
// returns the results, row by row.
func Matrix(ctx context.Context, st State, count int) []Reach {
	pods := st.pods()
	out := make([]Reach, 0, len(pods)*len(pods))
	for _, from := range pods {
		for _, to := range pods {
			if from.NS != to.NS {
				out = append(out, Reach{From: from, To: to})
			}
		}
	}
	return ping(ctx, out, count)
}

// FromOutside pings every pod from the client on the outside network of
// the sandbox's first router (none without one): pods are reached through
// the routes the nodes advertise over BGP.
func FromOutside(ctx context.Context, st State, count int) []Reach {
	if len(st.Routers) == 0 || st.Routers[0].Outside == "" {
		return nil
	}
	from := PodState{Name: "outside " + OutsideClient.String(), NS: st.Routers[0].Outside, IP: OutsideClient.String()}
	var out []Reach
	for _, to := range st.pods() {
		out = append(out, Reach{From: from, To: to})
	}
	return ping(ctx, out, count)
}

func (st State) pods() []PodState {
	var pods []PodState
	for _, n := range st.Nodes {
		pods = append(pods, n.Pods...)
	}
	return pods
}

// ping fills in the results of pairs.
func ping(ctx context.Context, out []Reach, count int) []Reach {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range out {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			r := &out[i]
			res, err := Exec(ctx, r.From.NS, "ping", "-n", "-q", "-c", fmt.Sprint(count), "-i", "0.2", "-W", "1", r.To.IP)
			if m := rttRe.FindStringSubmatch(res); err == nil && m != nil {
				r.OK = true
				if ms, perr := time.ParseDuration(m[1] + "ms"); perr == nil {
					r.RTT = ms
				}
			}
		}()
	}
	wg.Wait()
	return out
}

// PrintMatrix writes the results as a table: one row per source pod, one
// column per destination, each cell the average latency or FAIL. It
// returns how many pairs failed.
func PrintMatrix(w io.Writer, results []Reach) int {
	var order []string
	cells := map[[2]string]string{}
	seen := map[string]bool{}
	failed := 0
	for _, r := range results {
		for _, p := range []PodState{r.From, r.To} {
			if !seen[p.Name] {
				seen[p.Name] = true
				order = append(order, p.Name)
			}
		}
		cell := "FAIL"
		if r.OK {
			cell = fmt.Sprintf("%.3fms", float64(r.RTT.Microseconds())/1000)
		} else {
			failed++
		}
		cells[[2]string{r.From.Name, r.To.Name}] = cell
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "FROM \\ TO\t%s\n", strings.Join(order, "\t"))
	for _, from := range order {
		row := []string{from}
		for _, to := range order {
			c, ok := cells[[2]string{from, to}]
			if !ok {
				c = "-"
			}
			row = append(row, c)
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
	return failed
}
