/**
 * Keyset paging in the panel's lists (jobs, endpoints, pipeline runs).
 *
 * The API answers each page with `next`, the cursor of the page after it, and
 * takes it back as `after`. Going forward pushes that cursor on a stack of the
 * pages visited; going back pops it, so the page before is asked for again with
 * the very cursor that fetched it. A page therefore never shifts while new rows
 * arrive (they show up on the first page), and the API needs no backward cursor.
 */
import { TranslationBundle } from '@jupyterlab/translation';
import * as React from 'react';

export interface ICursorPages {
  /** The cursor of the page shown (null: the first page). */
  after: string | null;
  /** 0 for the first page. */
  index: number;
  /** The cursor of the page after the one shown, from its answer. */
  next: string | null;
  setNext(next: string | null): void;
  forward(): void;
  back(): void;
  /** Back to the first page (a filter changed). */
  reset(): void;
}

export function useCursorPages(): ICursorPages {
  const [stack, setStack] = React.useState<(string | null)[]>([null]);
  const [next, setNext] = React.useState<string | null>(null);
  return {
    after: stack[stack.length - 1],
    index: stack.length - 1,
    next,
    setNext,
    forward: () => {
      if (next !== null) {
        setStack([...stack, next]);
      }
    },
    back: () => {
      if (stack.length > 1) {
        setStack(stack.slice(0, -1));
      }
    },
    reset: () => {
      setStack([null]);
      setNext(null);
    }
  };
}

/** Back / page number / forward; hidden while everything fits on one page. */
export function Pager(props: {
  pages: ICursorPages;
  trans: TranslationBundle;
  backLabel: string;
  forwardLabel: string;
  /** What the page holds, e.g. "26–50 / 120"; the page number when left out. */
  position?: string;
}): JSX.Element | null {
  const { pages, trans } = props;
  if (pages.index === 0 && pages.next === null) {
    return null;
  }
  return (
    <div className="nbs-pager">
      <button
        type="button"
        className="nbs-pager-back"
        disabled={pages.index === 0}
        onClick={pages.back}
      >
        {props.backLabel}
      </button>
      <span className="nbs-pager-position">
        {props.position ?? trans.__('page %1', pages.index + 1)}
      </span>
      <button
        type="button"
        className="nbs-pager-forward"
        disabled={pages.next === null}
        onClick={pages.forward}
      >
        {props.forwardLabel}
      </button>
    </div>
  );
}
