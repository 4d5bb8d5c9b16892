package main

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// writePlot draws cold start time against N as a PNG line chart with the
// 1 s target as a dashed line.
func writePlot(path string, cold []coldResult) error {
	const w, h, left, bottom, top, right = 720, 420, 70, 50, 40, 30
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	black, grey := color.Black, color.Gray{Y: 200}
	blue, red := color.RGBA{30, 90, 200, 255}, color.RGBA{200, 40, 40, 255}

	maxN, maxT := 1.0, 1.2 // seconds; the target is 1 s
	for _, c := range cold {
		maxN = max(maxN, float64(c.N))
		maxT = max(maxT, c.Converge.Seconds()*1.15)
	}
	x := func(n float64) int { return left + int(n/maxN*float64(w-left-right)) }
	y := func(s float64) int { return h - bottom - int(s/maxT*float64(h-bottom-top)) }

	line(img, left, h-bottom, w-right, h-bottom, black, false)
	line(img, left, h-bottom, left, top, black, false)
	for i := 0; i <= 5; i++ {
		s := maxT * float64(i) / 5
		line(img, left, y(s), w-right, y(s), grey, false)
		label(img, 8, y(s)+4, fmt.Sprintf("%.2f s", s), black)
		n := maxN * float64(i) / 5
		label(img, x(n)-16, h-bottom+18, fmt.Sprintf("%.0f", n), black)
	}
	line(img, left, y(1), w-right, y(1), red, true)
	label(img, w-right-120, y(1)-6, "target 1 s", red)
	prevX, prevY := -1, -1
	for _, c := range cold {
		px, py := x(float64(c.N)), y(c.Converge.Seconds())
		if prevX >= 0 {
			line(img, prevX, prevY, px, py, blue, false)
		}
		for dx := -3; dx <= 3; dx++ {
			for dy := -3; dy <= 3; dy++ {
				img.Set(px+dx, py+dy, blue)
			}
		}
		label(img, px-20, py-10, fmt.Sprintf("%.0f ms", float64(c.Converge.Milliseconds())), blue)
		prevX, prevY = px, py
	}
	label(img, left, 22, "weftd cold start: time until every peer's route is in the kernel", black)
	label(img, (w-left)/2, h-12, "peers (N)", black)

	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return png.Encode(f, img)
}

func line(img *image.RGBA, x0, y0, x1, y1 int, c color.Color, dashed bool) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := sign(x1-x0), sign(y1-y0)
	err := dx + dy
	for i := 0; ; i++ {
		if !dashed || (i/6)%2 == 0 {
			img.Set(x0, y0, c)
			img.Set(x0, y0+1, c)
		}
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * err
		if e2 >= dy {
			err += dy
			x0 += sx
		}
		if e2 <= dx {
			err += dx
			y0 += sy
		}
	}
}

func label(img *image.RGBA, x, y int, s string, c color.Color) {
	d := &font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func sign(v int) int {
	switch {
	case v < 0:
		return -1
	case v > 0:
		return 1
	}
	return 0
}
