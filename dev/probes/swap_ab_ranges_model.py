# The range bookkeeping of swap_ab_gemm.cu, modelled in Python: the kernel's segments (a range meets at
# most two tiles; the sum kernel finds every part of a tile, each k stage once) and the whole-op
# form's fix-up (the CTA holding a tile's k from 0, and the later parts it counts). Run: python3 FILE

def range_begin(tiles, k_all, split, ctas, c):
    if split > 0: return (c // split) * k_all + (c % split) * k_all // split
    return tiles * k_all * c // ctas
def check(tiles, k_all, split, ctas):
    written = {}  # (cta, segment) -> (tile, set of k)
    for c in range(ctas):
        b, e = range_begin(tiles,k_all,split,ctas,c), range_begin(tiles,k_all,split,ctas,c+1)
        i, seg = 0, 0
        iters = e - b
        while i < iters:
            first = b + i
            seg_end = min((first // k_all + 1) * k_all, e)
            ks = set()
            for it in range(first, seg_end):
                ks.add(it % k_all); tile = it // k_all; i += 1
            assert seg < 2, (tiles,k_all,split,ctas,c)
            written[(c, seg)] = (tile, ks); seg += 1
    for tile in range(tiles):
        lo, hi = tile * k_all, tile * k_all + k_all
        c = tile * split if split > 0 else lo * ctas // (tiles * k_all)
        while c > 0 and range_begin(tiles,k_all,split,ctas,c) > lo: c -= 1
        cover = []
        while c < ctas and range_begin(tiles,k_all,split,ctas,c) < hi:
            if range_begin(tiles,k_all,split,ctas,c+1) <= lo: c += 1; continue
            seg = 1 if range_begin(tiles,k_all,split,ctas,c) < lo else 0
            t, ks = written[(c, seg)]
            assert t == tile, (tile, c, seg, t)
            cover += list(ks); c += 1
        assert sorted(cover) == list(range(k_all)), (tiles, k_all, split, ctas, tile)
# kNorm 3: the head's CTA and its count of later parts
def owner(tiles,k_all,split,ctas,it):
    lo, hi = 0, ctas-1
    while lo < hi:
        mid = (lo+hi+1)//2
        if range_begin(tiles,k_all,split,ctas,mid) <= it: lo = mid
        else: hi = mid-1
    return lo
def check3(tiles,k_all,split,ctas):
    for tile in range(tiles):
        o = owner(tiles,k_all,split,ctas,tile*k_all)
        last = owner(tiles,k_all,split,ctas,tile*k_all+k_all-1)
        assert range_begin(tiles,k_all,split,ctas,o) <= tile*k_all < range_begin(tiles,k_all,split,ctas,o+1)
        # o's segment in this tile starts at k 0 (it is its last segment unless the range ends in the tile)
        for c in range(o+1, last+1):
            b = range_begin(tiles,k_all,split,ctas,c)
            assert tile*k_all < b < tile*k_all+k_all, (tile, c)  # its first segment: a later part of this tile
        # the CTA after last starts at or after the next tile
        if last+1 < ctas: assert range_begin(tiles,k_all,split,ctas,last+1) >= tile*k_all+k_all
n = 0
for tiles in range(1, 100):
    for k_all in (4, 16, 40, 56, 64, 71, 128):
        for sms in (132, 114):
            layouts = [(min(sms // tiles if sms // tiles > 0 else 1, k_all), None)]
            if (tiles * k_all + sms - 1) // sms <= k_all and tiles * k_all >= sms:
                layouts.append((0, sms))  # stream-K over the SMs
            for split, ctas in layouts:
                ctas = tiles * split if ctas is None else ctas
                check(tiles, k_all, split, ctas)
                check3(tiles, k_all, split, ctas)
                n += 1
print("ranges and owners ok over", n, "layouts")
