#!/bin/bash
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
S=$(date +%s.%N)
/usr/bin/time -v .venv/bin/nestemb text train --beir ../shared/data/scifact --out runs/minilm-cpu --device cpu 2> runs/text_cache/train_time.txt
E=$(date +%s.%N); echo "TRAIN_WALL $(echo "$E - $S" | bc)"
.venv/bin/nestemb text eval-sts --sts ../shared/data/stsb/sts-test.csv --model runs/minilm-cpu --dims 16,32,64,128,256,384 --out runs/text_cache/sts_cpu.json --device cpu --overwrite
E2=$(date +%s.%N); echo "STS_WALL $(echo "$E2 - $E" | bc)"
.venv/bin/nestemb text eval-retrieval --beir ../shared/data/scifact --model runs/minilm-cpu --dims 32,64,128,256,384 --out runs/text_cache/scifact_cpu.json --device cpu --overwrite
E3=$(date +%s.%N); echo "RET_WALL $(echo "$E3 - $E2" | bc)"
