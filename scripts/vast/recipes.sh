# Sourced by finetune_ret.sh, finetune_cap.sh and finetune_qa.sh: run recipes of config/vast/finetune_cfg/
# one after another, each with train.sh (torchrun; NNODES NODE_RANK NPROC_PER_NODE MASTER_ADDR
# MASTER_PORT from the environment), fine-tuning the run in --pretrain_dir (default
# output/vast/pretrain_vast) into <pretrain_dir>/downstream/<recipe>.
#   run_recipes "recipe-a recipe-b ..." [RECIPE ...] [--pretrain_dir DIR] [--key value ...]
# Named recipes (without .json) narrow the list; other options go to run.py. Before anything starts,
# vast.preflight checks every chosen recipe and names what is missing (exit status 2).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

run_recipes() {
    local known="$1"
    shift
    local chosen=() options=() pretrain_dir="output/vast/pretrain_vast"
    while [ $# -gt 0 ]; do
        case "$1" in
            --pretrain_dir) pretrain_dir="$2"; shift 2 ;;
            --pretrain_dir=*) pretrain_dir="${1#*=}"; shift ;;
            --*) options+=("$@"); break ;;
            *) if [[ " $known " != *" $1 "* ]]; then
                   echo "error: unknown recipe '$1'; choose from: $known" >&2
                   exit 2
               fi
               chosen+=("$1"); shift ;;
        esac
    done
    [ ${#chosen[@]} -gt 0 ] || read -r -a chosen <<< "$known"
    local configs=() name
    for name in "${chosen[@]}"; do configs+=(--config "config/vast/finetune_cfg/$name.json"); done
    if ! "$PY" -m vast.preflight "${configs[@]}" --pretrain_dir "$pretrain_dir" "${options[@]}"; then
        # several recipes: one line each; one recipe: what to fetch and where it goes
        [ ${#chosen[@]} -eq 1 ] || echo "for the files to fetch and where they go, name one: bash $0 ${chosen[0]}" >&2
        exit 2
    fi
    for name in "${chosen[@]}"; do
        bash scripts/vast/train.sh --config "config/vast/finetune_cfg/$name.json" --pretrain_dir "$pretrain_dir" \
            --output_dir "$pretrain_dir/downstream/$name" "${options[@]}"
    done
}
